"""One optimizer step of a worker: forward under autocast, float32 loss, scaled backward, clip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bratslab.models.runtime import autocast, prepare_input
from bratslab.train.losses import SegmentationLoss
from bratslab.train.optim import OptimizerBundle

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    pass


@dataclass(kw_only=True)
class StepContext:
    """What one optimizer step needs besides the batch.

    ``model`` runs the forward (under Ray Train the DDP wrapper); gradients are clipped to
    ``grad_clip`` over its trainable parameters (collected once, after freezing). ``amp``
    enables autocast: fp16 on CUDA, bf16 on CPU for the architectures in
    ``runtime.CPU_BF16_ARCHS`` (hence ``arch``).
    """

    model: nn.Module
    bundle: OptimizerBundle
    loss_fn: SegmentationLoss
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool = False
    arch: str | None = None
    grad_clip: float | None = None
    trainable: list[nn.Parameter] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]


def train_step(
    ctx: StepContext, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> float:
    """One optimizer step on a batch ``x`` ``(B, C, X, Y, Z)`` float32, ``y`` ``(B, 1, X, Y, Z)``
    uint8 labels (numpy arrays, or tensors from Ray Data, possibly already on the device);
    returns the loss. Autocast covers the forward only; the loss is computed in float32 and
    scaled by the GradScaler (a no-op unless fp16)."""
    xt = prepare_input(torch.as_tensor(x), ctx.device)  # channels-last 3-D on CPU (oneDNN)
    yt = torch.as_tensor(y).to(ctx.device, non_blocking=True)
    with autocast(ctx.device, enabled=ctx.amp, arch=ctx.arch):
        out = ctx.model(xt)
    loss = ctx.loss_fn(out, yt)
    optimizer = ctx.bundle.optimizer
    optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    if ctx.grad_clip:
        ctx.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(ctx.trainable, ctx.grad_clip)
    ctx.scaler.step(optimizer)
    ctx.scaler.update()
    if ctx.bundle.scheduler is not None:
        ctx.bundle.scheduler.step()
    return float(loss.detach())
