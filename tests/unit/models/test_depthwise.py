"""The fast depthwise backward gives nn.Conv3d's gradients and is used where it applies."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch import nn

from bratslab.models.depthwise import DepthwiseConv3d, is_depthwise_same, use_fast_depthwise
from bratslab.models.zoo import build_model


def _grads(conv: nn.Module, x: torch.Tensor, amp: bool = False):
    conv.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = conv(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach().float(), x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_conv3d(kernel, channels_last):
    torch.manual_seed(0)
    ref = nn.Conv3d(6, 6, kernel, padding=kernel // 2, groups=6)
    fast = nn.Conv3d(6, 6, kernel, padding=kernel // 2, groups=6)
    fast.load_state_dict(ref.state_dict())
    assert use_fast_depthwise(fast) == 1 and type(fast) is DepthwiseConv3d
    x = torch.randn(2, 6, 10, 9, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        ref, fast = (m.to(memory_format=torch.channels_last_3d) for m in (ref, fast))
    for a, b in zip(_grads(ref, x), _grads(fast, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gradients_are_close_and_float32():
    torch.manual_seed(0)
    ref = nn.Conv3d(4, 4, 3, padding=1, groups=4)
    fast = DepthwiseConv3d(4, 4, 3, padding=1, groups=4)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 8, 8, 8)
    got = _grads(fast, x, amp=True)
    assert all(t.dtype == torch.float32 for t in got[1:])
    for a, b in zip(_grads(ref, x, amp=True), got, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_only_stride1_same_padding_depthwise_convs_qualify():
    assert is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1))  # dense
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4, stride=2))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=0, groups=4))
    assert not is_depthwise_same(nn.ConvTranspose3d(4, 4, 3, padding=1, groups=4))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"))


def test_mednext_uses_it_with_unchanged_state_dict_keys():
    from monai.networks.nets import MedNeXt

    model = build_model(tiny_config("mednext"))
    fast = [m for m in model.modules() if isinstance(m, DepthwiseConv3d)]
    assert fast  # every block's depthwise conv
    plain = MedNeXt(spatial_dims=3, init_filters=4, in_channels=5, out_channels=3,
                    blocks_down=(1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1),
                    use_residual_connection=True, norm_type="group")  # fmt: skip
    assert list(model.state_dict()) == list(plain.state_dict())
