"""A faster CPU backward for MedNeXt's per-channel GroupNorm on channels-last tensors.

MedNeXt normalises with ``GroupNorm(C, C)``: one group per channel, i.e. instance normalisation.
PyTorch's CPU GroupNorm *backward* takes a slow path for channels-last input when every group
holds a single channel (fwd+bwd, 2 cores: 32 channels at 64³, batch 1: 61 ms; batch 2: 158 ms;
64 channels at 63³, batch 2: 347 ms). Per sample, instance norm over ``(X, Y, Z)`` *is*
training-mode batch norm, whose channels-last backward kernel is vectorised over channels. So
:class:`InstanceGroupNorm` keeps GroupNorm's forward (fast in either layout) and computes the
backward sample by sample with ``native_batch_norm_backward`` from GroupNorm's own saved mean and
1/std (the same statistics: biased variance, same eps): 34, 94 and 194 ms for the cases above.

Everything else (NCDHW input, no autograd, other devices, no affine parameters) uses
``nn.GroupNorm`` unchanged; under CPU autocast it runs float32 like GroupNorm does. Parameters
and state-dict keys are ``nn.GroupNorm``'s; outputs and gradients match it
(tests/unit/models/test_norm.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bratslab.models.precision import float32_island

CL = torch.channels_last_3d


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """``F.group_norm(x, C, w, b, eps)`` with a per-sample batch-norm backward.

    Shapes: ``x`` ``(B, C, X, Y, Z)`` channels-last, ``w`` and ``b`` ``(C,)``.
    """

    @staticmethod
    def forward(ctx, x, w, b, eps):
        n, c = x.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, x[0, 0].numel(), c, eps)
        ctx.save_for_backward(x, w, mean, rstd)  # mean, rstd: (B, C)
        ctx.eps = eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w, mean, rstd = ctx.saved_tensors
        g = g.contiguous(memory_format=CL)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        # Sample i alone is a batch of one, where batch norm's statistics are instance norm's.
        per_sample = [
            torch.ops.aten.native_batch_norm_backward(
                g[i : i + 1], x[i : i + 1], w, None, None, mean[i], rstd[i], True, ctx.eps, mask
            )
            for i in range(x.shape[0])
        ]
        gx = gw = gb = None
        if mask[0]:
            gx = per_sample[0][0] if len(per_sample) == 1 else torch.cat([s[0] for s in per_sample])
        if mask[1]:
            gw = torch.stack([s[1] for s in per_sample]).sum(0)
        if mask[2]:
            gb = torch.stack([s[2] for s in per_sample]).sum(0)
        return gx, gw, gb, None


def _fast_backward_applies(x: torch.Tensor, norm: nn.GroupNorm) -> bool:
    return (
        x.device.type == "cpu"
        and x.ndim == 5
        and x.dtype == torch.float32
        and norm.affine
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=CL)
        and not x.is_contiguous()
    )


class InstanceGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(C, C)`` with a faster CPU backward for channels-last ``(B, C, X, Y, Z)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_island(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_backward_applies(x, self):
            return _ChannelsLastInstanceNorm.apply(x, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def use_instance_group_norm(model: nn.Module) -> int:
    """Switch every ``nn.GroupNorm`` with one channel per group in ``model`` to
    :class:`InstanceGroupNorm` in place; returns how many were switched."""
    n = 0
    for module in model.modules():
        if type(module) is nn.GroupNorm and module.num_groups == module.num_channels:
            module.__class__ = InstanceGroupNorm
            n += 1
    return n
