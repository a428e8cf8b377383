"""A faster CPU path for MedNeXt's per-channel GroupNorm on channels-last batches of one.

MedNeXt normalises with ``GroupNorm(C, C)``: one group per channel, i.e. instance normalisation.
PyTorch's CPU GroupNorm backward takes a slow path for channels-last input when every group
holds a single channel (32 channels at 64³, 2 cores: 47-67 ms against 18 ms for the same tensor
in NCDHW; 64 channels at 63³: 91-142 ms against 25 ms). For a batch of one, instance norm over
``(X, Y, Z)`` per channel *is* training-mode batch norm, whose channels-last CPU kernels are
vectorised over channels, so :class:`InstanceGroupNorm` calls ``F.batch_norm`` there (no running
statistics; same biased variance and eps). Everything else (batches > 1, NCDHW, autocast, no
autograd, other devices) uses ``nn.GroupNorm`` unchanged. Parameters and state-dict keys are
``nn.GroupNorm``'s; outputs and gradients match it (tests/unit/models/test_norm.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bratslab.models.runtime import float32_island


def _batch_norm_applies(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.ndim == 5
        and x.shape[0] == 1
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous()
    )


class InstanceGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(C, C)`` computed by training-mode ``F.batch_norm`` for a channels-last
    batch of one ``(1, C, X, Y, Z)`` on CPU while autograd records."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_island(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if _batch_norm_applies(x):
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


def use_instance_group_norm(model: nn.Module) -> int:
    """Switch every ``nn.GroupNorm`` with one channel per group in ``model`` to
    :class:`InstanceGroupNorm` in place; returns how many were switched."""
    n = 0
    for module in model.modules():
        if type(module) is nn.GroupNorm and module.num_groups == module.num_channels:
            module.__class__ = InstanceGroupNorm
            n += 1
    return n
