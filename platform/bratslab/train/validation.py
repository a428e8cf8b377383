"""Validation during training: sliding-window inference on whole validation cases, Dice per region.

Each rank validates its own slice of the fold's validation cases; the loop sums the per-case
Dice over ranks. Inference runs on the bare (un-wrapped) module in eval mode, so DDP hooks are
not involved and ranks do not wait on each other mid-case. The regions scored are those of the
store's profile (:class:`~bratslab.data.region_set.RegionSet`): WT, TC, ET for BraTS
2021/2023, the six of post-treatment glioma (ET, NETC, SNFH, RC, TC, WT), and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bratslab.data.region_set import (
    RegionSet,
    predicted_masks,
    probabilities_to_store_labels,
    region_set,
    scored_masks,
    store_to_source,
)
from bratslab.evaluate.metrics import dice
from bratslab.evaluate.panoptica_metric import lesionwise_dice

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec


def predict_probabilities(
    model: nn.Module, x: np.ndarray, patch: Sequence[int], spec: JobSpec, device: torch.device
) -> np.ndarray:
    """Probabilities ``(C, X, Y, Z)`` of one case ``x`` ``(C_in, X, Y, Z)``: sliding window, no
    TTA, sigmoid (region models) or softmax (label models)."""
    from bratslab.inference.sliding_window import predict_probabilities as sliding

    probs, _ = sliding(
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
    return probs


def panoptica_lesion_dice(
    probs: np.ndarray, y: np.ndarray, spacing, output: str, regions: RegionSet
) -> list[float]:
    """The organisers' lesion-wise Dice (panoptica) per scored region, in ``regions.scored``
    order, of one case's probabilities against its store labels ``y``."""
    pred = store_to_source(probabilities_to_store_labels(probs, output, regions), regions.profile)
    ref = np.asarray(y)
    ref = store_to_source(ref[0] if ref.ndim == 4 else ref, regions.profile)
    scores = lesionwise_dice(pred, ref, spacing, regions.profile)
    return [scores[r] for r in regions.scored]


def val_keys(regions: RegionSet) -> tuple[str, ...]:
    """What :func:`validate` sums, in order: ``dice_<r>`` then ``lesion_dice_<r>`` per scored
    region."""
    names = tuple(regions.scored)
    return tuple(f"dice_{r}" for r in names) + tuple(f"lesion_dice_{r}" for r in names)


def validate(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    patch: Sequence[int],
    spec: JobSpec,
    device: torch.device,
    regions: RegionSet | None = None,
) -> list[float]:
    """Per-case sums over ``rows`` (volumes read via mmap), in :func:`val_keys` order, then the
    number of cases: ``[Σ dice_wt, Σ dice_tc, Σ dice_et, Σ lesion_dice_wt, ..., n_cases]`` for
    the BraTS 2023 regions (``regions``: the store profile's; default WT, TC, ET). Lesion-wise
    Dice is the BraTS 2023 one with ``training.val_lesionwise``'s parameters, or the organisers'
    panoptica one (``panoptica``); its sums stay 0 when ``val_lesionwise`` is null."""
    from bratslab.evaluate.lesionwise import lesion_metrics

    regions = regions or region_set()
    n = len(regions.scored)
    model.eval()
    sums = [0.0] * (2 * n + 1)
    in_ch = spec.model.in_channels
    challenge = spec.training.val_lesionwise
    # no_grad, not inference_mode: the inference helper may convert the (shared, trainable)
    # parameters to channels-last, and inference tensors could then not join autograd again.
    with torch.no_grad():
        for row in rows:
            x = np.load(row["x_path"], mmap_mode="r")[:in_ch]
            y = np.load(row["y_path"], mmap_mode="r")
            gt = scored_masks(y, regions)
            probs = predict_probabilities(model, x, patch, spec, device)
            pred = predicted_masks(probs, spec.model.output, regions)
            values = [dice(pred[i], gt[i]) for i in range(n)]
            spacing = row.get("zooms") or (1.0, 1.0, 1.0)
            if challenge == "panoptica":
                values += panoptica_lesion_dice(probs, y, spacing, spec.model.output, regions)
            elif challenge:
                values += [
                    lesion_metrics(pred[i], gt[i], spacing, challenge).lesion_dice for i in range(n)
                ]
            else:
                values += [0.0] * n
            for i, v in enumerate(values):
                sums[i] += v
            sums[-1] += 1
    return sums


def validation_means(
    sums: Sequence[float], cases: float, regions: RegionSet, lesionwise: bool
) -> dict[str, float]:
    """:func:`validate`'s sums (over ranks) → ``val/dice_<r>`` per region and ``val/dice_mean``
    over them, and the lesion-wise ones when ``lesionwise``."""
    n = len(regions.scored)
    out = {f"val/{k}": v / cases for k, v in zip(val_keys(regions), sums, strict=True)}
    if not lesionwise:
        out = {k: v for k, v in out.items() if "lesion" not in k}
    out["val/dice_mean"] = sum(sums[:n]) / (n * cases)
    if lesionwise:
        out["val/lesion_dice_mean"] = sum(sums[n : 2 * n]) / (n * cases)
    return out
