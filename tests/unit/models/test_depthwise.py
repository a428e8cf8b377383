"""The fast depthwise backward gives nn.Conv3d's gradients and is used where it applies."""

from __future__ import annotations

import pytest
import torch
from conftest import forward_backward
from torch import nn

from bratslab.models.depthwise import DepthwiseConv3d, is_depthwise_same, use_fast_depthwise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_conv3d(kernel, channels_last, dtype):
    torch.manual_seed(0)
    ref = nn.Conv3d(6, 6, kernel, padding=kernel // 2, groups=6, dtype=dtype)
    fast = nn.Conv3d(6, 6, kernel, padding=kernel // 2, groups=6, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    assert use_fast_depthwise(fast) == 1 and type(fast) is DepthwiseConv3d
    x = torch.randn(2, 6, 10, 9, 8, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        ref, fast = (m.to(memory_format=torch.channels_last_3d) for m in (ref, fast))
    # float64 shows the same function; float32 differs by summation order only (the weight
    # gradient sums ~1,400 products in another order).
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(forward_backward(ref, x), forward_backward(fast, x), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_bf16_autocast_gradients_are_close_and_float32():
    torch.manual_seed(0)
    ref = nn.Conv3d(4, 4, 3, padding=1, groups=4)
    fast = DepthwiseConv3d(4, 4, 3, padding=1, groups=4)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 8, 8, 8)
    got = forward_backward(fast, x, amp=True)
    assert all(t.dtype == torch.float32 for t in got[1:])
    for a, b in zip(forward_backward(ref, x, amp=True), got, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_strided_depthwise_is_switched_and_trains_in_float32_under_autocast():
    torch.manual_seed(0)
    ref = nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=4)
    fast = nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=4)
    fast.load_state_dict(ref.state_dict())
    assert use_fast_depthwise(nn.Sequential(fast, nn.Conv3d(4, 4, 1))) == 1  # not the 1x1x1
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.float32  # oneDNN's bf16 depthwise backward is slow
        with torch.no_grad():
            assert fast(x).dtype == torch.bfloat16  # inference stays bf16
    for a, b in zip(forward_backward(ref, x), forward_backward(fast, x, amp=True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_stride1_same_padding_depthwise_convs_qualify():
    assert is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1))  # dense
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4, stride=2))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=0, groups=4))
    assert not is_depthwise_same(nn.ConvTranspose3d(4, 4, 3, padding=1, groups=4))
    assert not is_depthwise_same(nn.Conv3d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"))
