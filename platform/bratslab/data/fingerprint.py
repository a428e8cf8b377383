"""Dataset fingerprint (shapes, spacing, intensities), suggested patch size and k-fold splits.

Everything here is a pure function of the per-case metadata, sorted by case id, so a store
rebuilt from the same inputs gets byte-identical ``dataset.json`` whatever the processing order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from bratslab.data.meta import CaseMeta
from bratslab.data.preprocess_config import PreprocessConfig


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if len(values) else 0.0


def compute_fingerprint(metas: Sequence[CaseMeta]) -> dict:
    """Median cropped shape, spacing and per-modality intensity statistics.

    Returns:
        ``{"num_cases", "median_cropped_shape" [X,Y,Z] voxels, "min_stored_shape",
        "spacing" [x,y,z] mm (median), "spacing_min", "spacing_max", "anisotropic",
        "intensity": {modality: {"mean", "std", "p00_5", "p99_5", "min", "max"}}}`` where the
        intensity entries are medians over cases of each case's non-zero-voxel statistic
        (min/max: extremes over cases).
    """
    metas = sorted(metas, key=lambda m: m.id)
    if not metas:
        return {"num_cases": 0}
    cropped = np.array(
        [[e - s for s, e in zip(m.bbox_start, m.bbox_end, strict=True)] for m in metas]
    )
    zooms = np.array([m.zooms for m in metas], dtype=np.float64)
    spacing = np.median(zooms, axis=0)
    intensity: dict[str, dict[str, float]] = {}
    for mod in metas[0].intensity:
        per = [m.intensity[mod] for m in metas if mod in m.intensity]
        intensity[mod] = {
            k: _median([p[k] for p in per]) for k in ("mean", "std", "p00_5", "p99_5")
        }
        intensity[mod]["min"] = float(min(p["min"] for p in per))
        intensity[mod]["max"] = float(max(p["max"] for p in per))
    return {
        "num_cases": len(metas),
        "median_cropped_shape": [int(round(v)) for v in np.median(cropped, axis=0)],
        "min_stored_shape": [int(v) for v in np.min([m.shape for m in metas], axis=0)],
        "spacing": [round(float(v), 6) for v in spacing],
        "spacing_min": [round(float(v), 6) for v in zooms.min(axis=0)],
        "spacing_max": [round(float(v), 6) for v in zooms.max(axis=0)],
        "anisotropic": bool(spacing.max() > 1.5 * spacing.min()),
        "intensity": {k: {kk: round(vv, 6) for kk, vv in v.items()} for k, v in intensity.items()},
    }


def suggest_patch_size(
    median_shape: Sequence[int],
    min_stored_shape: Sequence[int],
    multiple: int = 16,
    voxel_budget: int = 128**3,
) -> list[int]:
    """nnU-Net-style patch size: the median cropped shape, made trainable.

    Each side is rounded down to a multiple of ``multiple`` (so it divides by the network's
    total downsampling) and kept ≤ the smallest stored side (every case then holds a whole
    patch); while the voxel count exceeds ``voxel_budget`` the longest side shrinks by one
    ``multiple``. A BraTS median crop (~140x170x140) gives 128x128x128.
    """
    patch = []
    for med, lo in zip(median_shape, min_stored_shape, strict=True):
        cap = max(multiple, (int(lo) // multiple) * multiple)
        side = max(multiple, (int(med) // multiple) * multiple)
        patch.append(min(side, cap))
    while int(np.prod(patch)) > voxel_budget and max(patch) > multiple:
        i = int(np.argmax(patch))
        patch[i] -= multiple
    return patch


def make_folds(case_ids: Sequence[str], num_folds: int, seed: int = 0) -> list[dict]:
    """Deterministic k-fold split of ``case_ids`` (order-independent).

    Cases are ordered by ``sha256(f"{seed}:{id}")`` and dealt round-robin, so adding a case
    moves few others. With fewer than ``num_folds`` cases there are ``len(case_ids)`` folds;
    with one case, a single fold whose train and val are that case.

    Returns:
        ``[{"train": [ids], "val": [ids]}, ...]``, ids sorted within each list.
    """
    ids = sorted(set(case_ids))
    if not ids:
        return []
    if len(ids) == 1:
        return [{"train": list(ids), "val": list(ids)}]
    k = min(num_folds, len(ids))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    val = [sorted(order[f::k]) for f in range(k)]
    return [{"train": sorted(set(ids) - set(v)), "val": v} for v in val]


def fingerprint_hash(fingerprint: dict, cfg: PreprocessConfig, case_ids: Sequence[str]) -> str:
    """sha256 identifying the store's content: fingerprint, preprocessing and case list."""
    blob = json.dumps(
        {"fingerprint": fingerprint, "preprocessing": cfg.model_dump(), "cases": sorted(case_ids)},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()
