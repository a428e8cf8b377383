"""MedNeXt's depthwise 3-D convolutions on CPU: float32 under autocast, faster stride-1 backward.

oneDNN's depthwise 3-D ``convolution_backward`` computes the input gradient ~4x slower than the
equivalent *forward* convolution that produces it: for stride 1, dilation 1 and "same" padding,
the input gradient of a depthwise convolution is the depthwise convolution of the output
gradient with the spatially flipped kernel (32 channels at 64³, channels-last, 2 cores: 0.090 s
vs 0.021 s). :class:`DepthwiseConv3d` routes that gradient through the forward kernel, and the
weight gradient through a forward convolution too (:func:`_weight_grad`); forward, parameters
and state-dict keys are those of :class:`torch.nn.Conv3d`. The input-gradient change sped up a
MedNeXt-S training step on CPU by ~12 % (BENCHMARKS.md); gradients are the same
(tests/unit/models/test_depthwise.py).

While autograd records under CPU autocast, every depthwise convolution (any stride) runs in
float32 (:func:`~bratslab.models.precision.float32_island`): oneDNN's bf16 depthwise weight
gradient is ~6x slower than its float32 one (32 channels at 64³: 552 vs 93 ms). Other devices,
and strides, dilations or paddings other than stride-1 "same", use ``nn.Conv3d``'s computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bratslab.models.precision import float32_island


class _DepthwiseSame(torch.autograd.Function):
    """``conv3d(x, w, b, padding=pad, groups=C)`` with a forward-kernel input gradient.

    Shapes: ``x`` ``(B, C, X, Y, Z)``, ``w`` ``(C, 1, k, k, k)`` (odd k), ``b`` ``(C,)`` or None.
    """

    @staticmethod
    def forward(ctx, x, w, b, pad):
        ctx.save_for_backward(x, w)
        ctx.pad = pad
        ctx.has_bias = b is not None
        return F.conv3d(x, w, b, padding=pad, groups=w.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        channels = w.shape[0]
        # Under autocast the output (hence g) may be bf16/fp16 while x and w are float32:
        # compute in g's dtype, as autocast's forward did, and return each input's dtype.
        dt = g.dtype
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv3d(g, w.to(dt).flip([2, 3, 4]), padding=ctx.pad, groups=channels)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(x.to(dt), g, ctx.pad).to(w.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3, 4)).to(w.dtype)
        return gx, gw, gb, None


def _weight_grad(x: torch.Tensor, g: torch.Tensor, pad: tuple[int, int, int]) -> torch.Tensor:
    """Weight gradient ``(C, 1, k, k, k)`` of the depthwise "same" convolution, from its input
    ``x`` and output gradient ``g`` (both ``(B, C, X, Y, Z)``).

    ``gw[c, i, j, l] = sum over b, voxels of g[b, c, v] * x_padded[b, c, v + (i, j, l)]``: per
    sample, a depthwise convolution of the padded input with ``g`` as an X x Y x Z kernel. oneDNN
    runs that 1.3-3x faster than its own depthwise weight gradient (2 cores, channels-last: 32
    channels at 64³, batch 2, k3: 211 -> 121 ms; k7: 907 -> 284 ms).
    """
    total = None
    for i in range(x.shape[0]):
        xp = F.pad(x[i : i + 1], [p for p in reversed(pad) for _ in (0, 1)])
        gw = F.conv3d(xp, g[i : i + 1].transpose(0, 1), groups=x.shape[1]).transpose(0, 1)
        total = gw if total is None else total + gw
    return total


def has_depthwise_groups(conv: nn.Module) -> bool:
    """True for a convolution (plain or transposed) with one group per channel, in == out."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def is_depthwise(conv: nn.Module) -> bool:
    """True for a depthwise ``nn.Conv3d`` (not transposed): one input channel per output."""
    return isinstance(conv, nn.Conv3d) and has_depthwise_groups(conv)


def is_depthwise_same(conv: nn.Module) -> bool:
    """True for an ``nn.Conv3d`` (not transposed) that is depthwise, stride 1, dilation 1, with
    odd kernel sizes and "same" zero padding: the case :class:`DepthwiseConv3d` handles."""
    return (
        is_depthwise(conv)
        and conv.stride == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and all(
            k % 2 == 1 and p == k // 2 for k, p in zip(conv.kernel_size, conv.padding, strict=True)
        )
    )


class DepthwiseConv3d(nn.Conv3d):
    """Depthwise ``nn.Conv3d`` for MedNeXt on CPU: float32 while training under autocast
    (:func:`~bratslab.models.precision.float32_island`) and, for stride 1 and "same" padding, the
    fast backward of :class:`_DepthwiseSame`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_island(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and is_depthwise_same(self):
            return _DepthwiseSame.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)


def use_fast_depthwise(model: nn.Module) -> int:
    """Switch every depthwise ``nn.Conv3d`` in ``model`` to :class:`DepthwiseConv3d` in place
    (same parameters and state-dict keys); returns how many were switched."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Conv3d and is_depthwise(module):
            module.__class__ = DepthwiseConv3d
            n += 1
    return n
