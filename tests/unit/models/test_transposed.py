"""The forward-convolution transposed conv gives nn.ConvTranspose3d's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import forward_backward
from torch import nn

from bratslab.models.transposed import (
    FastConvTranspose3d,
    conv_transpose3d,
    is_fast_transposable,
    use_fast_transposed,
)

CL = torch.channels_last_3d


def _pair(*args, **kw) -> tuple[nn.ConvTranspose3d, nn.ConvTranspose3d]:
    ref = nn.ConvTranspose3d(*args, **kw)
    fast = nn.ConvTranspose3d(*args, **kw)
    fast.load_state_dict(ref.state_dict())
    assert use_fast_transposed(fast) == 1 and type(fast) is FastConvTranspose3d
    return ref, fast


# (in, out, kernel, stride, padding, groups, bias): MedNeXt's up-block depthwise and 1x1x1
# residual convolutions, its 1x1x1 heads (stride 1), odd strides and paddings.
CASES = [
    (6, 6, 3, 2, 1, 6, True),
    (6, 6, 5, 2, 2, 6, True),
    (6, 6, 3, 3, 0, 6, False),
    (6, 4, 1, 2, 0, 1, True),
    (6, 4, 1, 2, 0, 1, False),
    (6, 3, 1, 1, 0, 1, True),
    (6, 4, 1, (2, 1, 3), 0, 2, True),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_conv_transpose3d(case, channels_last):
    c_in, c_out, k, stride, pad, groups, bias = case
    ref, fast = _pair(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=bias)
    x = torch.randn(2, c_in, 5, 4, 6)
    if channels_last:
        x = x.contiguous(memory_format=CL)
        ref, fast = (m.to(memory_format=CL) for m in (ref, fast))
    want, got = forward_backward(ref, x), forward_backward(fast, x)
    assert got[0].shape == want[0].shape
    if channels_last:
        assert fast(x).is_contiguous(memory_format=CL)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inference_path_matches_without_autograd():
    ref, fast = _pair(4, 4, 3, stride=2, padding=1, groups=4)
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            conv_transpose3d(x, ref.weight, ref.bias, ref.stride, ref.padding, ref.groups), ref(x)
        )


def test_depthwise_trains_in_float32_under_autocast_and_1x1_in_bf16():
    ref, fast = _pair(4, 4, 3, stride=2, padding=1, groups=4)
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.float32  # float32 island while autograd records
        with torch.no_grad():
            assert fast(x).dtype == torch.bfloat16  # inference keeps bf16
    for a, b in zip(forward_backward(ref, x), forward_backward(fast, x, amp=True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref, fast = _pair(4, 2, 1, stride=2)
    got = forward_backward(fast, x, amp=True)
    assert all(t.dtype == torch.float32 for t in got[1:])  # grads in the parameters' dtype
    for a, b in zip(forward_backward(ref, x, amp=True), got, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_only_handled_transposed_convs_qualify():
    assert is_fast_transposable(nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, groups=4))
    assert is_fast_transposable(nn.ConvTranspose3d(4, 2, 1, stride=2))
    assert not is_fast_transposable(nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1))  # dense k3
    assert not is_fast_transposable(
        nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=4)
    )
    assert not is_fast_transposable(nn.ConvTranspose3d(4, 4, 3, stride=2, padding=3, groups=4))
    assert not is_fast_transposable(nn.ConvTranspose3d(4, 4, 3, dilation=2, groups=4))
    assert not is_fast_transposable(nn.Conv3d(4, 4, 3, padding=1, groups=4))
