"""Per-layer precision under CPU autocast: the layers whose bf16 backward oneDNN runs slowly
keep float32 (:func:`float32_island`), while :mod:`bratslab.models.runtime` turns autocast on
for the network around them."""

from __future__ import annotations

from collections.abc import Callable

import torch


def float32_island(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` in float32 with autocast off when CPU autocast is on and autograd records.

    For the layers whose bf16 *backward* oneDNN runs slowly on CPU (MedNeXt's depthwise
    convolutions and per-channel GroupNorm): they keep float32 while the dense 1x1x1 layers
    around them run bf16. Forward-only (inference) and other devices call ``fn(x)`` unchanged.
    """
    if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return fn(x.float())
    return fn(x)
