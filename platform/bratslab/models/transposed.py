"""A faster CPU path for MedNeXt's strided transposed 3-D convolutions (its up-sampling blocks).

oneDNN runs MedNeXt's depthwise and 1x1x1 ``ConvTranspose3d`` layers (stride 2) far slower than
the forward convolutions of the same size: at 64 channels, 32³ -> 63³, channels-last, 2 cores,
the depthwise one took 97 ms forward + 135 ms backward and the 1x1x1 one 42 + 24 ms. Both are
rewritten here with forward convolutions, which oneDNN does well:

* forward: a transposed convolution is the convolution of the zero-upsampled input (``stride - 1``
  zeros between samples) with the spatially flipped kernel, its in/out channels swapped, and
  padding ``k - 1 - p``. For a 1x1x1 kernel that is a 1x1x1 convolution of the input scattered
  onto every ``stride``-th voxel of a bias-filled output.
* backward: the input gradient of a transposed convolution is the *strided forward* convolution
  of the output gradient with the same weight; the weight gradient is that strided
  convolution's weight gradient, with the input as its output gradient.

Same module, parameters and state-dict keys as :class:`torch.nn.ConvTranspose3d`; gradients
match it (tests/unit/models/test_transposed.py). Dense kernels larger than 1x1x1 are not
switched (zero-upsampling would multiply their work by stride³); other devices, output paddings,
dilations or padding modes use ``nn.ConvTranspose3d`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bratslab.models.depthwise import has_depthwise_groups
from bratslab.models.precision import float32_island


def _conv_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Transposed-conv weight ``(C_in, C_out/g, k, k, k)`` as the equivalent forward-conv weight
    ``(C_out, C_in/g, k, k, k)``: channels swapped within each group, kernel flipped."""
    c_in, c_out_g = w.shape[:2]
    kernel = w.shape[2:]
    w = w.reshape(groups, c_in // groups, c_out_g, *kernel).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, *kernel).flip([2, 3, 4])


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout to give outputs made from ``x``: channels-last if ``x`` is, else NCDHW."""
    cl = torch.channels_last_3d
    if x.is_contiguous(memory_format=cl) and not x.is_contiguous():
        return cl
    return torch.contiguous_format


def conv_transpose3d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    groups: int,
) -> torch.Tensor:
    """``F.conv_transpose3d(x, w, b, stride, padding, groups=groups)`` with forward convolutions.

    Shapes: ``x`` ``(B, C_in, X, Y, Z)``, ``w`` ``(C_in, C_out/groups, k, k, k)``, output
    ``(B, C_out, (X-1)*s - 2p + k, ...)``; needs ``p <= k - 1`` per axis.
    """
    kernel = w.shape[2:]
    if all(k == 1 for k in kernel) and all(st == 1 for st in stride) and not any(padding):
        return F.conv3d(x, _conv_weight(w, groups), b, groups=groups)
    # Every stride-th voxel of a zero (or bias) volume of (X - 1) * s + 1 voxels per axis.
    size = [(s - 1) * st + 1 for s, st in zip(x.shape[2:], stride, strict=True)]
    every = (slice(None), slice(None), *(slice(None, None, st) for st in stride))
    if all(k == 1 for k in kernel) and not any(padding):
        # 1x1x1: only those voxels see the input; all others hold the bias alone.
        z = F.conv3d(x, _conv_weight(w, groups), None, groups=groups)
        out = torch.empty(
            (x.shape[0], z.shape[1], *size), dtype=z.dtype, device=z.device,
            memory_format=_memory_format(x),
        )  # fmt: skip
        if b is None:
            out.zero_()
            out[every] = z
        else:
            bias = b.to(z.dtype).view(1, -1, 1, 1, 1)
            out.copy_(bias.expand_as(out))
            out[every] = z + bias
        return out
    up = torch.empty(
        (*x.shape[:2], *size), dtype=x.dtype, device=x.device, memory_format=_memory_format(x)
    )
    up.zero_()
    up[every] = x
    pad = [k - 1 - p for k, p in zip(kernel, padding, strict=True)]
    return F.conv3d(up, _conv_weight(w, groups), b, padding=pad, groups=groups)


class _ConvTranspose(torch.autograd.Function):
    """:func:`conv_transpose3d` with a backward made of a strided forward convolution (input
    gradient) and that convolution's weight gradient."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, groups):
        ctx.save_for_backward(x, w)
        ctx.geometry = (stride, padding, groups)
        ctx.has_bias = b is not None
        return conv_transpose3d(x, w, b, stride, padding, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, groups = ctx.geometry
        # Under autocast g may be bf16/fp16 while x and w are float32: compute in g's dtype, as
        # the forward did, and return each input's own dtype.
        dt = g.dtype
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv3d(g, w.to(dt), None, stride, padding, 1, groups).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # The strided convolution g -> x has this layer's weight; x is its output gradient.
            gw = torch.ops.aten.convolution_backward(
                x.to(dt),
                g,
                w.to(dt),
                None,
                list(stride),
                list(padding),
                [1, 1, 1],
                False,
                [0, 0, 0],
                groups,
                [False, True, False],
            )[1].to(w.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3, 4)).to(w.dtype)
        return gx, gw, gb, None, None, None


def is_fast_transposable(conv: nn.Module) -> bool:
    """True for an ``nn.ConvTranspose3d`` that :class:`FastConvTranspose3d` handles: depthwise or
    1x1x1, no output padding or dilation, zero padding ``p <= k - 1``. (A dense kernel > 1 would
    make the zero-upsampled convolution do stride³ times the work: oneDNN's own is better.)"""
    if type(conv) is not nn.ConvTranspose3d:
        return False
    return (
        (has_depthwise_groups(conv) or all(k == 1 for k in conv.kernel_size))
        and conv.output_padding == (0, 0, 0)
        and conv.dilation == (1, 1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and all(0 <= p <= k - 1 for k, p in zip(conv.kernel_size, conv.padding, strict=True))
    )


class FastConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` computed with forward convolutions on CPU
    (:func:`conv_transpose3d`); depthwise ones in float32 while training under autocast."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None:
            return super().forward(x, output_size)
        if has_depthwise_groups(self):
            # Depthwise: oneDNN's bf16 depthwise weight gradient is slow; keep float32.
            return float32_island(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.weight, self.bias, self.stride, self.padding, self.groups)
        if torch.is_grad_enabled():
            return _ConvTranspose.apply(*args)
        return conv_transpose3d(*args)


def use_fast_transposed(model: nn.Module) -> int:
    """Switch every qualifying ``nn.ConvTranspose3d`` in ``model`` to
    :class:`FastConvTranspose3d` in place (same parameters and state-dict keys); returns how many
    were switched."""
    n = 0
    for module in model.modules():
        if is_fast_transposable(module):
            module.__class__ = FastConvTranspose3d
            n += 1
    return n
