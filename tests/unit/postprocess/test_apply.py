"""Applying thresholds to a label map: per-region deletion, ET→NCR, 26-connectivity."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.postprocess.apply import components, postprocess_labels
from bratslab.postprocess.config import PostprocessConfig


def _tumour() -> np.ndarray:
    """A 30³ map: a big tumour (ED shell, NCR, an ET core) and three small islands."""
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:16, 2:16, 2:16] = 2  # edema, 14³
    labels[5:13, 5:13, 5:13] = 1  # NCR core
    labels[7:11, 7:11, 7:11] = 3  # ET, 64 voxels
    labels[25:27, 25:27, 25:27] = 2  # 8-voxel edema island (WT only)
    labels[20:23, 25:28, 2:5] = 1  # 27-voxel NCR island (WT and TC)
    labels[24, 2, 24] = 3  # 1-voxel ET island (WT, TC, ET)
    return labels


def test_noop_config_returns_an_unchanged_copy():
    labels = _tumour()
    out = postprocess_labels(labels, PostprocessConfig())
    assert out is not labels and np.array_equal(out, labels)


@pytest.mark.parametrize(
    ("cfg", "removed", "kept"),
    [
        # WT: the 1-voxel and 8-voxel islands go, the 27-voxel one stays.
        (PostprocessConfig(min_size_wt=10), [(25, 25, 25), (24, 2, 24)], [(21, 26, 3)]),
        (PostprocessConfig(min_size_wt=28), [(21, 26, 3), (25, 25, 25)], [(8, 8, 8)]),
        # TC: only TC components count; the 8-voxel edema island is not TC and stays.
        (PostprocessConfig(min_size_tc=28), [(21, 26, 3), (24, 2, 24)], [(25, 25, 25)]),
        # ET: the single ET voxel goes; the 64-voxel ET core stays.
        (PostprocessConfig(min_size_et=2), [(24, 2, 24)], [(8, 8, 8), (21, 26, 3)]),
    ],
)
def test_components_below_the_size_are_removed_and_above_kept(cfg, removed, kept):
    labels = _tumour()
    out = postprocess_labels(labels, cfg)
    for voxel in removed:
        assert out[voxel] == 0, voxel
    for voxel in kept:
        assert out[voxel] == labels[voxel], voxel
    assert np.array_equal(out[2:16, 2:16, 2:16], labels[2:16, 2:16, 2:16])  # the tumour


def test_threshold_equal_to_a_size_keeps_it():
    labels = _tumour()
    out = postprocess_labels(labels, PostprocessConfig(min_size_wt=27))  # "fewer than 27"
    assert out[21, 26, 3] == 1 and out[25, 25, 25] == 0


def test_small_et_becomes_ncr_and_deletion_wins():
    labels = _tumour()
    out = postprocess_labels(labels, PostprocessConfig(et_to_ncr_below=100))
    assert out[24, 2, 24] == 1  # relabelled, not deleted
    assert np.array_equal(out[7:11, 7:11, 7:11], np.ones((4, 4, 4)))  # 64 < 100: NCR too
    assert not (out == 3).any()
    both = postprocess_labels(labels, PostprocessConfig(min_size_et=2, et_to_ncr_below=100))
    assert both[24, 2, 24] == 0 and both[8, 8, 8] == 1  # tiny: deleted; small: NCR
    # The kept ET core (not below the relabel size) stays ET.
    assert postprocess_labels(labels, PostprocessConfig(et_to_ncr_below=64))[8, 8, 8] == 3


def test_et_label_4_convention():
    labels = _tumour()
    labels[labels == 3] = 4
    out = postprocess_labels(labels, PostprocessConfig(min_size_et=2), et_label=4)
    assert out[24, 2, 24] == 0 and out[8, 8, 8] == 4


def test_components_use_26_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one component
    mask[4, 4, 0] = True
    comps = components(mask)
    assert comps.sizes.tolist() == [1, 2]
    labels = mask.astype(np.uint8) * 2
    out = postprocess_labels(labels, PostprocessConfig(min_size_wt=2))
    assert out[1, 1, 1] == out[2, 2, 2] == 2 and out[4, 4, 0] == 0


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r"label map \(X, Y, Z\)"):
        postprocess_labels(np.zeros((3, 4, 4, 4), np.uint8), PostprocessConfig(min_size_wt=1))
