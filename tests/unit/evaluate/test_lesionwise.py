"""BraTS 2023 lesion-wise metrics on hand-built cases (official rules: 26-connectivity, GT lesions
merged within a dilation of d, volume threshold T, missed lesion = Dice 0 / HD95 374)."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.evaluate.lesionwise import (
    CHALLENGES,
    LesionParams,
    lesion_metrics,
    region_lesion_metrics,
    resolve_params,
)

SHAPE = (40, 40, 40)


def _cube(mask, corner, size):
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def _empty():
    return np.zeros(SHAPE, dtype=bool)


def test_challenge_parameters():
    assert CHALLENGES["gli"] == CHALLENGES["ssa"] == CHALLENGES["ped"] == LesionParams(3, 50.0)
    assert CHALLENGES["men"] == LesionParams(1, 50.0)
    assert CHALLENGES["met"] == LesionParams(1, 2.0)
    assert resolve_params("BraTS-MET") == CHALLENGES["met"]
    with pytest.raises(ValueError, match="unknown challenge"):
        resolve_params("lung")


def test_perfect_prediction():
    gt = _cube(_empty(), (5, 5, 5), 5)  # 125 mm³ > 50
    r = lesion_metrics(gt.copy(), gt)
    assert (r.lesion_dice, r.lesion_hd95, r.tp, r.fp, r.fn) == (1.0, 0.0, 1, 0, 0)


def test_false_positive_lesion_is_penalised():
    gt = _cube(_empty(), (5, 5, 5), 5)
    pred = _cube(gt.copy(), (25, 25, 25), 4)  # far away: matches no GT lesion
    r = lesion_metrics(pred, gt)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.lesion_dice == pytest.approx(1.0 / 2)
    assert r.lesion_hd95 == pytest.approx((0.0 + 374.0) / 2)


def test_missed_lesion_scores_zero_and_374():
    gt = _cube(_empty(), (5, 5, 5), 5)
    _cube(gt, (25, 25, 25), 5)
    pred = _cube(_empty(), (5, 5, 5), 5)  # only the first lesion found
    r = lesion_metrics(pred, gt)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.lesion_dice == pytest.approx(0.5)
    assert r.lesion_hd95 == pytest.approx(374.0 / 2)


def test_close_gt_components_merge_by_dilation():
    # Two GT cubes 4 voxels apart: d=3 dilations of both meet (3 + 3 ≥ 4), so GLI sees one
    # lesion; MEN's single dilation does not join them, so it sees two.
    gt = _cube(_empty(), (5, 5, 5), 5)
    _cube(gt, (14, 5, 5), 5)
    pred = _cube(_empty(), (5, 5, 5), 5)  # finds only the first cube
    gli = lesion_metrics(pred, gt, challenge="gli")
    assert len(gli.lesions) == 1 and (gli.tp, gli.fp, gli.fn) == (1, 0, 0)
    assert gli.lesion_dice == pytest.approx(2 * 125 / (125 + 250))
    men = lesion_metrics(pred, gt, challenge="men")
    assert len(men.lesions) == 2 and (men.tp, men.fp, men.fn) == (1, 0, 1)
    assert men.lesion_dice == pytest.approx(0.5)


def test_prediction_near_lesion_matches_through_dilated_gt():
    gt = _cube(_empty(), (5, 5, 5), 5)  # x 5..9
    pred = _cube(_empty(), (12, 5, 5), 5)  # x 12..16: gap of 2 voxels, no overlap
    r = lesion_metrics(pred, gt, challenge="gli")  # dilation 3 reaches it: a TP, Dice 0
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)
    assert r.lesion_dice == 0.0 and r.lesion_hd95 == pytest.approx(7.0)
    r1 = lesion_metrics(pred, gt, challenge="men")  # dilation 1 does not: FN + FP
    assert (r1.tp, r1.fp, r1.fn) == (0, 1, 1)
    assert r1.lesion_hd95 == pytest.approx(374.0)


def test_lesions_under_threshold_are_left_out():
    gt = _cube(_empty(), (5, 5, 5), 5)  # 125 mm³
    _cube(gt, (25, 25, 25), 3)  # 27 mm³ ≤ 50: ignored for GLI, counted for MET (T=2)
    pred = _cube(_empty(), (5, 5, 5), 5)
    gli = lesion_metrics(pred, gt, challenge="gli")
    assert (gli.tp, gli.fp, gli.fn) == (1, 0, 0) and gli.lesion_dice == 1.0
    assert [s.counted for s in gli.lesions] == [True, False]
    met = lesion_metrics(pred, gt, challenge="met")
    assert (met.tp, met.fp, met.fn) == (1, 0, 1) and met.lesion_dice == pytest.approx(0.5)
    # Volume is in mm³: the same 27 voxels at 2 mm spacing along z are 54 mm³ > 50.
    aniso = lesion_metrics(pred, gt, spacing=(1.0, 1.0, 2.0), challenge="gli")
    assert aniso.fn == 1


def test_small_matched_lesion_is_neither_tp_nor_fp():
    gt = _cube(_empty(), (5, 5, 5), 3)  # 27 mm³, under T
    pred = gt.copy()
    r = lesion_metrics(pred, gt, challenge="gli")
    # Its matched prediction is not a false positive; nothing is counted → Dice 1, HD95 0.
    assert (r.tp, r.fp, r.fn) == (0, 0, 0)
    assert (r.lesion_dice, r.lesion_hd95) == (1.0, 0.0)


def test_empty_prediction_and_both_empty():
    gt = _cube(_empty(), (5, 5, 5), 5)
    r = lesion_metrics(_empty(), gt)
    assert (r.lesion_dice, r.lesion_hd95, r.tp, r.fp, r.fn) == (0.0, 374.0, 0, 0, 1)
    both = lesion_metrics(_empty(), _empty())
    assert (both.lesion_dice, both.lesion_hd95, both.tp, both.fp, both.fn) == (1.0, 0.0, 0, 0, 0)
    fp_only = lesion_metrics(gt, _empty())
    assert (fp_only.lesion_dice, fp_only.lesion_hd95, fp_only.fp) == (0.0, 374.0, 1)


def test_one_prediction_matching_two_lesions_counts_for_both():
    gt = _cube(_empty(), (5, 5, 5), 5)
    _cube(gt, (15, 5, 5), 5)  # 5-voxel gap: separate lesions under MEN (d=1)
    pred = np.zeros(SHAPE, dtype=bool)
    pred[4:21, 5:10, 5:10] = True  # one component covering both
    r = lesion_metrics(pred, gt, challenge="men")
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert [s.matched for s in r.lesions] == [(1,), (1,)]


def test_region_lesion_metrics():
    gt = np.zeros((3, *SHAPE), dtype=bool)
    _cube(gt[0], (5, 5, 5), 6)
    pred = gt.copy()
    out = region_lesion_metrics(pred, gt)
    assert set(out) == {"wt", "tc", "et"}
    assert out["wt"].tp == 1 and out["et"].lesion_dice == 1.0


def _random_case(seed: int):
    """Random boxes as GT; prediction = dilated GT + extra boxes, cut at z < 8."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)

    def blobs(n):
        m = np.zeros(shape, bool)
        for _ in range(n):
            c = rng.integers(3, np.array(shape) - 3)
            r = rng.integers(1, 5, 3)
            m[tuple(slice(max(ci - ri, 0), ci + ri) for ci, ri in zip(c, r, strict=True))] = True
        return m

    gt = blobs(4)
    pred = ndimage.binary_dilation(gt) | blobs(2)
    pred[:, :, :8] = False
    return pred, gt


# (challenge, spacing) → (lesion Dice, lesion HD95, TP, FP, legacy HD95, NSD@1mm), computed with
# the official script (rachitsaluja/BraTS-2023-Metrics eval.py: cc3d components + DeepMind
# surface-distance) on _random_case(11).
OFFICIAL_SEED_11 = {
    ("gli", (1.0, 1.0, 1.0)): (0.29743, 187.5, 2, 2, 18.275667, 0.874354),
    ("gli", (1.0, 0.8, 2.0)): (0.342292, 150.8, 3, 2, 15.904716, 0.82783),
    ("met", (1.0, 1.0, 1.0)): (0.376347, 125.333333, 4, 2, 18.275667, 0.874354),
    ("met", (1.0, 0.8, 2.0)): (0.376347, 126.0, 4, 2, 15.904716, 0.82783),
}


@pytest.mark.parametrize(("challenge", "spacing"), list(OFFICIAL_SEED_11))
def test_matches_official_script(challenge, spacing):
    from bratslab.evaluate.metrics import surface_metrics

    pred, gt = _random_case(11)
    lesion_dice, lesion_hd95, tp, fp, hd, surface_dice = OFFICIAL_SEED_11[(challenge, spacing)]
    r = lesion_metrics(pred, gt, spacing, challenge)
    assert r.lesion_dice == pytest.approx(lesion_dice, abs=1e-5)
    assert r.lesion_hd95 == pytest.approx(lesion_hd95, abs=1e-4)
    assert (r.tp, r.fp) == (tp, fp)
    legacy_hd, legacy_nsd = surface_metrics(pred, gt, spacing, tolerance_mm=1.0)
    assert legacy_hd == pytest.approx(hd, abs=1e-4)
    assert legacy_nsd == pytest.approx(surface_dice, abs=1e-5)
