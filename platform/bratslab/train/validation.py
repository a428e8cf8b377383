"""Validation during training: sliding-window inference on whole validation cases, Dice per region.

Each rank validates its own slice of the fold's validation cases; the loop sums the per-case
Dice over ranks. Inference runs on the bare (un-wrapped) module in eval mode, so DDP hooks are
not involved and ranks do not wait on each other mid-case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bratslab.data.labels import labels_to_regions
from bratslab.evaluate.metrics import region_dice

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec


def predict_regions(
    model: nn.Module,
    x: np.ndarray,
    patch: Sequence[int],
    spec: JobSpec,
    device: torch.device,
) -> np.ndarray:
    """Bool regions ``(3, X, Y, Z)`` (WT, TC, ET) for one case ``x`` ``(C, X, Y, Z)``."""
    from bratslab.inference.sliding_window import predict_probabilities

    probs, _ = predict_probabilities(
        [model],
        np.asarray(x, dtype=np.float32),
        roi_size=tuple(patch),
        overlap=spec.training.val_overlap,
        tta="none",
        sw_batch_size=spec.training.val_sw_batch_size,
        device=device,
        activation="sigmoid" if spec.model.output == "regions" else "softmax",
        amp=spec.training.amp,
    )
    if spec.model.output == "regions":
        return probs > 0.5
    return labels_to_regions(np.argmax(probs, axis=0).astype(np.uint8))


VAL_KEYS = ("dice_wt", "dice_tc", "dice_et", "lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et")


def validate(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    patch: Sequence[int],
    spec: JobSpec,
    device: torch.device,
) -> list[float]:
    """Per-case sums over ``rows`` (volumes read via mmap), in :data:`VAL_KEYS` order, then the
    number of cases: ``[Σ dice_wt, Σ dice_tc, Σ dice_et, Σ lesion_dice_wt, ..., n_cases]``.
    Lesion-wise sums stay 0 when ``training.val_lesionwise`` is null."""
    from bratslab.evaluate.lesionwise import lesion_metrics

    model.eval()
    sums = [0.0] * (len(VAL_KEYS) + 1)
    in_ch = spec.model.in_channels
    challenge = spec.training.val_lesionwise
    # no_grad, not inference_mode: the inference helper may convert the (shared, trainable)
    # parameters to channels-last, and inference tensors could then not join autograd again.
    with torch.no_grad():
        for row in rows:
            x = np.load(row["x_path"], mmap_mode="r")[:in_ch]
            gt = labels_to_regions(np.load(row["y_path"], mmap_mode="r"))
            pred = predict_regions(model, x, patch, spec, device)
            d = region_dice(pred, gt)
            values = [d["wt"], d["tc"], d["et"]]
            if challenge:
                spacing = row.get("zooms") or (1.0, 1.0, 1.0)
                values += [
                    lesion_metrics(pred[i], gt[i], spacing, challenge).lesion_dice for i in range(3)
                ]
            else:
                values += [0.0, 0.0, 0.0]
            for i, v in enumerate(values):
                sums[i] += v
            sums[-1] += 1
    return sums
