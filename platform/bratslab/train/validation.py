"""Validation during training: sliding-window inference on whole validation cases, Dice per region.

Each rank validates its own slice of the fold's validation cases; the loop sums the per-case
Dice over ranks. Inference runs on the bare (un-wrapped) module in eval mode, so DDP hooks are
not involved and ranks do not wait on each other mid-case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bratslab.data.labels import labels_to_regions
from bratslab.evaluate.metrics import region_dice
from bratslab.jobs.spec import JobSpec


def predict_regions(
    model: nn.Module,
    x: np.ndarray,
    patch: Sequence[int],
    spec: JobSpec,
    device: torch.device,
) -> np.ndarray:
    """Bool regions ``(3, X, Y, Z)`` (WT, TC, ET) for one case ``x`` ``(C, X, Y, Z)``."""
    from bratslab.evaluate.inference import predict_probabilities

    probs, _ = predict_probabilities(
        [model],
        np.asarray(x, dtype=np.float32),
        roi_size=tuple(patch),
        overlap=spec.training.val_overlap,
        tta="none",
        sw_batch_size=spec.training.val_sw_batch_size,
        device=device,
    )
    if spec.model.output == "regions":
        return probs > 0.5
    return labels_to_regions(np.argmax(probs, axis=0).astype(np.uint8))


def validate(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    patch: Sequence[int],
    spec: JobSpec,
    device: torch.device,
) -> list[float]:
    """``[Σ dice_wt, Σ dice_tc, Σ dice_et, n_cases]`` over ``rows`` (volumes read via mmap)."""
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]
    in_ch = spec.model.in_channels
    with torch.inference_mode():
        for row in rows:
            x = np.load(row["x_path"], mmap_mode="r")[:in_ch]
            gt = labels_to_regions(np.load(row["y_path"], mmap_mode="r"))
            d = region_dice(predict_regions(model, x, patch, spec, device), gt)
            sums[0] += d["wt"]
            sums[1] += d["tc"]
            sums[2] += d["et"]
            sums[3] += 1
    return sums
