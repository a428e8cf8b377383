"""Legacy (whole-volume) segmentation metrics: Dice, HD95 and normalised surface distance.

Conventions follow the official BraTS 2023 evaluation script (rachitsaluja/BraTS-2023-Metrics,
``eval.py``, ``get_LesionWiseScores``): Dice is 1 when prediction and ground truth are both empty;
HD95 is 0 when both are empty and the surface distance is infinite when one is empty, which the
script replaces by :data:`MAX_HD95` (374 mm, roughly the diagonal of a 240×240×155 1 mm volume).

Surface distances are DeepMind's ``surface-distance`` definition, which the official script
uses: surface elements ("surfels") between voxels with their areas in mm², distances in mm using
the voxel spacing, and a *robust* Hausdorff distance that takes the 95th percentile weighted by
surfel area. MONAI's ``get_edge_surface_distance(..., use_subvoxels=True)`` reproduces those
surfels and areas, so we build on it instead of porting the lookup tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bratslab.data.labels import REGIONS

MAX_HD95 = 374.0  # mm; the official script's replacement for an infinite distance

Spacing = Sequence[float]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of equal shape ``(X, Y, Z)``.

    Both empty → 1.0 (official script); one empty → 0.0.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"dice: shape mismatch {pred.shape} vs {gt.shape}")
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfel distances (mm) sorted ascending, each with its surfel area (mm²)."""

    gt_to_pred: np.ndarray
    gt_areas: np.ndarray
    pred_to_gt: np.ndarray
    pred_areas: np.ndarray


def _bbox_union(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``a | b`` as slices, or ``None`` if both are empty."""
    union = a | b
    if not union.any():
        return None
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        nz = np.flatnonzero(union.any(axis=other))
        slices.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(slices)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> SurfaceDistances:
    """Surface distances between two non-empty boolean masks ``(X, Y, Z)``.

    ``spacing`` is the voxel size in mm per axis. Distances of the surfels of one mask to the
    surface of the other, in mm, sorted ascending with their areas (DeepMind's
    ``compute_surface_distances``). Both masks must contain at least one voxel.
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if not pred.any() or not gt.any():
        raise ValueError("surface_distances needs two non-empty masks")
    # Crop to the union's bounding box first: MONAI crops too, but doing it in numpy avoids
    # converting whole 240×240×155 volumes to tensors for every lesion.
    box = _bbox_union(pred, gt)
    pred_t = torch.from_numpy(np.ascontiguousarray(pred[box]))
    gt_t = torch.from_numpy(np.ascontiguousarray(gt[box]))
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (edges_pred, edges_gt), (d_pred_gt, d_gt_pred), (areas_pred, areas_gt) = (
            get_edge_surface_distance(
                pred_t, gt_t, spacing=spacing, use_subvoxels=True, symmetric=True, warn_empty=False
            )
        )
    a_pred = areas_pred[edges_pred].double().numpy()
    a_gt = areas_gt[edges_gt].double().numpy()
    d_pg = d_pred_gt.double().numpy()
    d_gp = d_gt_pred.double().numpy()
    o_pg = np.argsort(d_pg, kind="stable")
    o_gp = np.argsort(d_gp, kind="stable")
    return SurfaceDistances(
        gt_to_pred=d_gp[o_gp], gt_areas=a_gt[o_gp], pred_to_gt=d_pg[o_pg], pred_areas=a_pred[o_pg]
    )


def _percentile_distance(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    # DeepMind's compute_robust_hausdorff: the distance at which the cumulative surfel area
    # first reaches ``percent`` of the surface.
    if len(distances) == 0:
        return float("inf")
    cumulative = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(idx, len(distances) - 1)])


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing = (1.0, 1.0, 1.0),
    tolerance_mm: float = 1.0,
    percent: float = 95.0,
) -> tuple[float, float]:
    """``(hd95, nsd)`` of two boolean masks ``(X, Y, Z)`` from one surface-distance pass.

    HD95: the robust (``percent``-th percentile) Hausdorff distance in mm; both empty → 0.0,
    exactly one empty → :data:`MAX_HD95` (the official script's 374).
    NSD: the area-weighted fraction of both surfaces lying within ``tolerance_mm`` of the other
    (DeepMind's ``compute_surface_dice_at_tolerance``); both empty → 1.0, one empty → 0.0.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"surface metrics: shape mismatch {pred.shape} vs {gt.shape}")
    p_any, g_any = bool(pred.any()), bool(gt.any())
    if not p_any and not g_any:
        return 0.0, 1.0
    if not p_any or not g_any:
        return MAX_HD95, 0.0
    sd = surface_distances(pred, gt, spacing)
    hd = max(
        _percentile_distance(sd.gt_to_pred, sd.gt_areas, percent),
        _percentile_distance(sd.pred_to_gt, sd.pred_areas, percent),
    )
    overlap = sd.gt_areas[sd.gt_to_pred <= tolerance_mm].sum()
    overlap += sd.pred_areas[sd.pred_to_gt <= tolerance_mm].sum()
    total = sd.gt_areas.sum() + sd.pred_areas.sum()
    return hd, float(overlap / total) if total > 0 else 0.0


def hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), percent: float = 95.0
) -> float:
    """Robust Hausdorff distance (mm) of two masks ``(X, Y, Z)``; see :func:`surface_metrics`."""
    return surface_metrics(pred, gt, spacing, percent=percent)[0]


def nsd(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), tolerance_mm: float = 1.0
) -> float:
    """Normalised surface distance of two masks ``(X, Y, Z)``; see :func:`surface_metrics`."""
    return surface_metrics(pred, gt, spacing, tolerance_mm)[1]


def _check_regions(pred: np.ndarray, gt: np.ndarray, n: int = len(REGIONS)) -> None:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[0] != n:
        raise ValueError(
            f"expected prediction and ground truth regions of shape ({n}, X, Y, Z), "
            f"got {pred.shape} and {gt.shape}"
        )


def region_dice(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice per region of bool regions ``(3, X, Y, Z)`` (WT, TC, ET) → ``{"wt", "tc", "et"}``."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _check_regions(pred, gt)
    return {r: dice(pred[i], gt[i]) for i, r in enumerate(REGIONS)}


def region_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing = (1.0, 1.0, 1.0),
    nsd_tolerance_mm: float = 1.0,
    regions: Sequence[str] = REGIONS,
) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm) and NSD per region for bool regions ``(R, X, Y, Z)`` named ``regions``
    (default WT, TC, ET; a profile's regions otherwise).

    Returns ``{"wt": {"dice", "hd95", "nsd"}, "tc": ..., "et": ...}``.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _check_regions(pred, gt, len(regions))
    out: dict[str, dict[str, float]] = {}
    for i, r in enumerate(regions):
        hd, surface_dice = surface_metrics(pred[i], gt[i], spacing, nsd_tolerance_mm)
        out[r] = {"dice": dice(pred[i], gt[i]), "hd95": hd, "nsd": surface_dice}
    return out
