"""Legacy Dice / HD95 / NSD on hand-built masks (official BraTS 2023 conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.evaluate.metrics import (
    MAX_HD95,
    dice,
    hd95,
    nsd,
    region_dice,
    region_metrics,
    surface_metrics,
)


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def test_dice_values_and_empty_rules():
    a = _box((20, 20, 20), (2, 2, 2), (6, 6, 6))  # 64 voxels
    b = _box((20, 20, 20), (4, 2, 2), (8, 6, 6))  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0  # both empty: official script scores 1
    assert dice(a, empty) == 0.0
    assert dice(empty, a) == 0.0


def test_hd95_empty_rules():
    a = _box((10, 10, 10), (2, 2, 2), (5, 5, 5))
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == MAX_HD95 == 374.0
    assert hd95(empty, a) == MAX_HD95
    assert nsd(empty, empty) == 1.0
    assert nsd(a, empty) == 0.0


def test_hd95_shift_in_mm_uses_spacing():
    a = _box((30, 30, 30), (5, 5, 5), (15, 15, 15))
    b = _box((30, 30, 30), (8, 5, 5), (18, 15, 15))  # shifted 3 voxels along x
    assert hd95(a, a) == 0.0
    assert hd95(b, a) == pytest.approx(3.0)
    assert hd95(b, a, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    # Along an axis the shift does not touch, spacing changes nothing.
    assert hd95(b, a, spacing=(1.0, 1.0, 3.0)) == pytest.approx(3.0)


def test_single_voxels_distance():
    a = np.zeros((10, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[5, 5, 2] = True
    b[5, 5, 7] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(1, 1, 0.5)) == pytest.approx(2.5)


def test_nsd_tolerance():
    a = _box((30, 30, 30), (5, 5, 5), (15, 15, 15))
    b = _box((30, 30, 30), (7, 5, 5), (17, 15, 15))  # 2 voxels off along x
    assert nsd(a, a) == pytest.approx(1.0)
    assert nsd(b, a, tolerance_mm=2.0) == pytest.approx(1.0)
    partial = nsd(b, a, tolerance_mm=1.0)
    assert 0.0 < partial < 1.0
    hd, surface_dice = surface_metrics(b, a, tolerance_mm=1.0)
    assert hd == pytest.approx(2.0) and surface_dice == pytest.approx(partial)


def test_region_metrics_shapes_and_keys():
    gt = np.zeros((3, 16, 16, 16), dtype=bool)
    gt[0, 2:10, 2:10, 2:10] = True
    gt[1, 3:8, 3:8, 3:8] = True
    pred = gt.copy()
    pred[2, 0, 0, 0] = True  # ET: GT empty, one false voxel
    d = region_dice(pred, gt)
    assert d == {"wt": 1.0, "tc": 1.0, "et": 0.0}
    m = region_metrics(pred, gt)
    assert m["wt"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    assert m["et"]["hd95"] == MAX_HD95 and m["et"]["nsd"] == 0.0
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        region_dice(pred[:2], gt[:2])
