"""Per-channel GroupNorm with a batch-norm backward: GroupNorm's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import forward_backward
from torch import nn

from bratslab.models.norm import InstanceGroupNorm, use_instance_group_norm

CL = torch.channels_last_3d


def _pair(channels: int):
    ref = nn.GroupNorm(channels, channels)
    with torch.no_grad():  # non-trivial affine parameters
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    fast = nn.GroupNorm(channels, channels)
    fast.load_state_dict(ref.state_dict())
    assert use_instance_group_norm(fast) == 1 and type(fast) is InstanceGroupNorm
    return ref, fast


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_same_outputs_and_gradients_as_group_norm(batch, channels_last):
    ref, fast = _pair(6)
    x = torch.randn(batch, 6, 7, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=CL)
    backward = type(fast(x.requires_grad_()).grad_fn).__name__
    # the per-sample batch-norm backward for channels-last; GroupNorm's own otherwise
    assert ("ChannelsLastInstanceNorm" in backward) == channels_last, backward
    got = forward_backward(fast, x)
    if channels_last:
        assert got[0].is_contiguous(memory_format=CL)
    for a, b in zip(forward_backward(ref, x), got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_float32_under_autocast_while_training():
    ref, fast = _pair(4)
    x = torch.randn(1, 4, 6, 6, 6).contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x.bfloat16().requires_grad_()).dtype == torch.float32
    got = forward_backward(fast, x.bfloat16(), amp=True)
    assert got[1].dtype == torch.bfloat16  # the input's own dtype
    for a, b in zip(forward_backward(ref, x.bfloat16(), amp=True), got, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_only_one_channel_per_group_is_switched():
    model = nn.Sequential(nn.GroupNorm(4, 4), nn.GroupNorm(2, 4), nn.InstanceNorm3d(4))
    assert use_instance_group_norm(model) == 1
    assert [type(m) for m in model] == [InstanceGroupNorm, nn.GroupNorm, nn.InstanceNorm3d]
