"""The fit: removes small false positives, keeps true small satellites, finds ET→NCR."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.data.labels import labels_to_regions
from bratslab.postprocess.apply import postprocess_labels
from bratslab.postprocess.config import FitConfig, PostprocessConfig
from bratslab.postprocess.fit import FitCase, candidate_sizes, fit_thresholds

GRID = FitConfig(candidates=[0, 10, 25, 50, 100], scale=1.0)


def _case(name, gt, pred, spacing=(1.0, 1.0, 1.0)) -> FitCase:
    return FitCase(name, pred, labels_to_regions(gt), spacing)


def _tumour(shape=(40, 40, 40)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[4:16, 4:16, 4:16] = 2
    labels[6:14, 6:14, 6:14] = 1
    labels[8:12, 8:12, 8:12] = 3
    return labels


def _satellite(labels, corner, side):
    x, y, z = corner
    labels[x : x + side, y : y + side, z : z + side] = 3


def _fp_and_satellite_cases(fp_side=3, sat_side=4):
    """Case A: two small false-positive blobs; case B: a true satellite, predicted."""
    gt_a = _tumour()
    pred_a = gt_a.copy()
    _satellite(pred_a, (30, 4, 30), fp_side)
    _satellite(pred_a, (4, 30, 30), fp_side)
    gt_b = _tumour()
    _satellite(gt_b, (30, 30, 30), sat_side)
    return [_case("a", gt_a, pred_a), _case("b", gt_b, gt_b.copy())]


def test_fit_removes_false_positives_and_keeps_true_satellites():
    cases = _fp_and_satellite_cases()  # FP 27 voxels, satellite 64 (> T = 50 mm³: counted)
    result = fit_thresholds(cases, GRID)
    assert result.after["mean"] > result.before["mean"]
    assert result.after["mean"] == pytest.approx(1.0)
    assert result.before["et"] < 1.0 and result.after["et"] == pytest.approx(1.0)
    cfg = result.config
    assert 27 < max(cfg.min_size_wt, cfg.min_size_tc, cfg.min_size_et) <= 64
    # Applied to the satellite case, nothing changes; the false positives are gone.
    assert np.array_equal(postprocess_labels(cases[1].labels, cfg), cases[1].labels)
    assert not postprocess_labels(cases[0].labels, cfg)[30:, :10, 30:].any()


def test_fit_keeps_small_true_lesions_when_validation_has_them():
    # Only true small lesions (27 voxels at 2 mm: 216 mm³, counted): removing any hurts.
    gt = _tumour()
    _satellite(gt, (30, 30, 30), 3)
    _satellite(gt, (30, 4, 30), 3)
    cases = [_case("c", gt, gt.copy(), spacing=(2.0, 2.0, 2.0))]
    result = fit_thresholds(cases, GRID)
    assert result.config == PostprocessConfig()
    assert result.after == result.before


def test_fit_prefers_relabelling_a_spurious_et_spot_inside_the_core():
    shape = (34, 34, 34)
    gt = np.zeros(shape, np.uint8)
    gt[4:30, 4:30, 4:30] = 2
    gt[8:26, 8:26, 8:26] = 1
    gt[9:13, 9:13, 9:13] = 3
    pred = gt.copy()
    pred[21:24, 21:24, 21:24] = 3  # 27 ET voxels inside the true NCR, far from the true ET
    result = fit_thresholds([_case("d", gt, pred)], GRID)
    assert 27 < result.config.et_to_ncr_below <= 64 and result.config.min_size_et == 0
    assert result.before["et"] == pytest.approx(0.5) and result.after["et"] == pytest.approx(1.0)
    assert result.after["wt"] == result.before["wt"] == pytest.approx(1.0)


def test_candidates_scale_with_the_volume():
    small = [
        FitCase("s", np.zeros((32, 32, 32), np.uint8), np.zeros((3, 32, 32, 32), bool), (1,) * 3)
    ]
    sizes = candidate_sizes(small, FitConfig())
    assert sizes[0] == 0 and sizes == sorted(sizes) and sizes[1] >= 1 and sizes[-1] < 500
    assert candidate_sizes(small, FitConfig(scale=1.0)) == [0, 10, 25, 50, 100, 150, 250, 500]


def test_fit_rejects_mismatched_shapes_and_no_cases():
    with pytest.raises(ValueError, match="no validation cases"):
        fit_thresholds([])
    bad = FitCase("x", np.zeros((4, 4, 4), np.uint8), np.zeros((3, 5, 5, 5), bool), (1,) * 3)
    with pytest.raises(ValueError, match="x: prediction"):
        fit_thresholds([bad])
