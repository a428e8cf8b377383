"""Validation on a post-treatment store: the six regions of the profile, lesion-wise Dice by the
BraTS 2023 definition or by the organisers' panoptica metric, means over all regions."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.data.region_set import region_set
from bratslab.train.validation import panoptica_lesion_dice, val_keys, validation_means

POST = region_set("brats2024-gli")


def _case():
    """Store labels with an enhancing lesion (3) and a resection cavity (4); region
    probabilities (WT, TC, ET, RC) that find the lesion and miss the cavity."""
    y = np.zeros((1, 24, 24, 24), dtype=np.uint8)
    y[0, 4:10, 4:10, 4:10] = 3
    y[0, 14:20, 14:20, 14:20] = 4
    probs = np.zeros((4, 24, 24, 24), dtype=np.float32)
    probs[:3, 4:10, 4:10, 4:10] = 0.9
    return probs, y


def test_panoptica_lesion_dice_per_region_of_the_profile():
    pytest.importorskip("panoptica", reason="the panoptica extra is not installed")
    probs, y = _case()
    got = dict(
        zip(POST.scored, panoptica_lesion_dice(probs, y, (1, 1, 1), "regions", POST), strict=True)
    )
    # found: ET, TC, WT; empty in both: NETC, SNFH (1, as BraTS counts it); missed: RC
    assert got == pytest.approx(
        {"et": 1.0, "netc": 1.0, "snfh": 1.0, "rc": 0.0, "tc": 1.0, "wt": 1.0}
    )


def test_means_are_over_every_region_of_the_profile():
    keys = val_keys(POST)
    assert keys[:6] == tuple(f"dice_{r}" for r in ("et", "netc", "snfh", "rc", "tc", "wt"))
    sums = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0] + [1.0, 1.0, 1.0, 0.0, 1.0, 0.5]
    means = validation_means(sums, 1, POST, lesionwise=True)
    assert means["val/dice_rc"] == 0.0 and means["val/dice_mean"] == pytest.approx(5 / 6)
    assert means["val/lesion_dice_mean"] == pytest.approx(4.5 / 6)
    assert "val/lesion_dice_rc" not in validation_means(sums, 1, POST, lesionwise=False)
