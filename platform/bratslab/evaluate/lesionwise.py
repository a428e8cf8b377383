"""BraTS 2023 lesion-wise Dice and HD95.

A faithful re-implementation of the official script (rachitsaluja/BraTS-2023-Metrics, ``eval.py``:
``get_LesionWiseScores`` and ``get_LesionWiseResults``), per region:

1. connected components with 26-connectivity (``cc3d.connected_components(..., 26)`` there,
   ``scipy.ndimage.label`` with a 3×3×3 structure here) on ground truth and prediction;
2. the ground truth is dilated ``d`` times with ``generate_binary_structure(3, 2)``; GT components
   that fall in one dilated component are merged into one lesion;
3. each GT lesion is dilated ``d`` times; every predicted component touching the dilated lesion
   is a true positive *for that lesion* (a component may match several lesions); Dice and HD95 are
   computed between the (undilated) GT lesion and the union of its matched components, so a missed
   lesion scores Dice 0 and HD95 ∞ → 374;
4. predicted components that match no GT lesion (including lesions under the threshold) are false
   positives;
5. GT lesions with volume ≤ T mm³ are dropped from numerator and denominator:
   LesionDice = ΣDice / (N_GT>T + N_FP), LesionHD95 = (ΣHD95 + 374·N_FP) / (N_GT>T + N_FP);
   an empty denominator gives Dice 1 and HD95 0.

Per-challenge parameters (``get_LesionWiseResults``): GLI, SSA, PED d=3 T=50; MEN d=1 T=50;
MET d=1 T=2. The official script loops over whole volumes per lesion; we work inside each lesion's
bounding box (grown by ``d``, which bounds the dilation's reach), which gives identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bratslab.data.labels import REGIONS
from bratslab.evaluate.metrics import MAX_HD95, dice, hd95


@dataclass(frozen=True)
class LesionParams:
    """Lesion-wise parameters: ``dilation`` iterations (voxels) and volume threshold (mm³)."""

    dilation: int
    volume_threshold_mm3: float


CHALLENGES: dict[str, LesionParams] = {
    "gli": LesionParams(3, 50.0),
    "ssa": LesionParams(3, 50.0),
    "ped": LesionParams(3, 50.0),
    "men": LesionParams(1, 50.0),
    "met": LesionParams(1, 2.0),
}

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_STRUCT = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionScore:
    """One GT lesion: its volume (mm³), Dice, HD95 (mm) and the predicted components it matched."""

    volume_mm3: float
    dice: float
    hd95: float
    matched: tuple[int, ...]
    counted: bool  # volume above the threshold, so part of the lesion-wise scores


@dataclass(frozen=True)
class LesionResult:
    """Lesion-wise scores of one region: ``tp``/``fn`` count GT lesions above the threshold."""

    lesion_dice: float
    lesion_hd95: float
    tp: int
    fp: int
    fn: int
    lesions: list[LesionScore] = field(default_factory=list)


def profile_params(profile) -> LesionParams:
    """The brats2023-family parameters of a challenge profile (:mod:`bratslab.data.profiles`)."""
    return LesionParams(profile.lesionwise.dilation, profile.lesionwise.min_size_mm3)


def resolve_params(challenge: str | LesionParams) -> LesionParams:
    """``"gli"|"ssa"|"ped"|"men"|"met"`` (case-insensitive, ``BraTS-`` prefix allowed) → params."""
    if isinstance(challenge, LesionParams):
        return challenge
    key = challenge.lower().removeprefix("brats-")
    if key not in CHALLENGES:
        raise ValueError(f"unknown challenge {challenge!r}; expected one of {sorted(CHALLENGES)}")
    return CHALLENGES[key]


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(box, shape, strict=True)
    )


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_DILATION_STRUCT, iterations=iterations)


def lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    challenge: str | LesionParams = "gli",
) -> LesionResult:
    """Lesion-wise Dice/HD95 of one region: bool masks ``(X, Y, Z)``, ``spacing`` in mm.

    See the module docstring for the definition; ``challenge`` picks ``d`` and ``T``.
    """
    params = resolve_params(challenge)
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(
            f"lesion_metrics: expected two (X, Y, Z) masks, got {pred.shape}, {gt.shape}"
        )
    d = params.dilation
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))

    pred_cc, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    pred_boxes = ndimage.find_objects(pred_cc)

    lesion_map = _lesion_map(gt, d)
    lesions: list[LesionScore] = []
    matched_any: set[int] = set()
    for k, box in enumerate(ndimage.find_objects(lesion_map), start=1):
        if box is None:
            continue
        roi = _grow(box, d, gt.shape)
        lesion_dilated = _dilate(lesion_map[roi] == k, d)
        hits = np.unique(pred_cc[roi][lesion_dilated])
        matched = tuple(int(c) for c in hits if c != 0)
        matched_any.update(matched)
        # Score inside the union of the lesion's box and its matched components' boxes; that
        # holds every voxel of both masks, so Dice and HD95 equal the whole-volume values.
        score_box = box
        for c in matched:
            score_box = _union(score_box, pred_boxes[c - 1])
        lesion = lesion_map[score_box] == k
        pred_union = np.isin(pred_cc[score_box], matched) if matched else np.zeros_like(lesion)
        volume = float(lesion.sum()) * voxel_mm3
        lesions.append(
            LesionScore(
                volume_mm3=volume,
                dice=dice(pred_union, lesion),
                hd95=hd95(pred_union, lesion, spacing),  # MAX_HD95 when nothing matched
                matched=matched,
                counted=volume > params.volume_threshold_mm3,
            )
        )

    return _result(lesions, fp=n_pred - len(matched_any))


def _lesion_map(gt: np.ndarray, d: int) -> np.ndarray:
    """int32 ``(X, Y, Z)``: the GT components that one dilation by ``d`` joins share a label
    (official get_GTseg_combinedByDilation): each GT voxel takes the label of the dilated
    component it lies in; 0 outside the GT."""
    lesion_map = np.zeros(gt.shape, dtype=np.int32)
    if gt.any():
        gt_box = _grow(ndimage.find_objects(gt.astype(np.uint8))[0], d, gt.shape)
        dilated_cc, _ = ndimage.label(_dilate(gt[gt_box], d), structure=_CONNECTIVITY_26)
        lesion_map[gt_box] = np.where(gt[gt_box], dilated_cc, 0)
    return lesion_map


def _result(lesions: list[LesionScore], fp: int) -> LesionResult:
    """The region's lesion-wise scores from its lesions' and ``fp`` unmatched components."""
    counted = [s for s in lesions if s.counted]
    tp = sum(1 for s in counted if s.matched)
    denominator = len(counted) + fp
    if denominator == 0:  # official: NaN → Dice 1, HD95 0 (nothing to find, nothing found)
        lesion_dice, lesion_hd95 = 1.0, 0.0
    else:
        lesion_dice = sum(s.dice for s in counted) / denominator
        lesion_hd95 = (sum(s.hd95 for s in counted) + MAX_HD95 * fp) / denominator
    return LesionResult(
        lesion_dice=float(lesion_dice),
        lesion_hd95=float(lesion_hd95),
        tp=tp,
        fp=fp,
        fn=len(counted) - tp,
        lesions=lesions,
    )


def region_lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    challenge: str | LesionParams = "gli",
    regions: Sequence[str] = REGIONS,
) -> dict[str, LesionResult]:
    """:func:`lesion_metrics` for each region of bool ``(R, X, Y, Z)`` masks named ``regions``
    (default WT, TC, ET; a profile's regions otherwise)."""
    n = len(regions)
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[0] != n:
        raise ValueError(f"expected ({n}, X, Y, Z) regions, got {pred.shape} and {gt.shape}")
    return {r: lesion_metrics(pred[i], gt[i], spacing, challenge) for i, r in enumerate(regions)}
