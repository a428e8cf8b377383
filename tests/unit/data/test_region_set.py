"""A profile's regions in store labels: the BraTS 2023 triple unchanged, post-treatment glioma's
RC as a fourth output and six scored regions, labels written back in each convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bratslab.data.labels import (
    labels_to_regions,
    probabilities_to_labels,
    regions_to_labels,
)
from bratslab.data.profiles import PROFILES
from bratslab.data.region_set import (
    model_region_set,
    output_masks,
    paint_labels,
    predicted_masks,
    predicted_source_labels,
    region_set,
    scored_masks,
    to_dataset_values,
)
from bratslab.train.losses import SegmentationLoss, labels_to_region_targets

RNG = np.random.default_rng(0)


def _labels(values, shape=(6, 5, 4)) -> np.ndarray:
    return RNG.choice(np.asarray(values, dtype=np.uint8), size=shape)


@pytest.mark.parametrize("name", ["brats2021", "brats2023-gli", "brats2023-met"])
def test_legacy_profiles_are_the_wt_tc_et_triple(name):
    rs = region_set(name)
    assert rs.legacy and rs.outputs == ("wt", "tc", "et") and rs.values == (0, 1, 2, 3)
    y = _labels([0, 1, 2, 3])
    np.testing.assert_array_equal(output_masks(y, rs), labels_to_regions(y))
    np.testing.assert_array_equal(scored_masks(y, rs), labels_to_regions(y))
    regions = RNG.random((3, 6, 5, 4)) > 0.5  # inconsistent on purpose: ET outside TC etc.
    np.testing.assert_array_equal(paint_labels(regions, rs), regions_to_labels(regions))


def test_post_treatment_outputs_rc_and_scores_six_regions():
    rs = region_set("gli-post")
    assert not rs.legacy and rs.profile == "brats2024-gli"
    assert rs.outputs == ("wt", "tc", "et", "rc") and rs.values == (0, 1, 2, 3, 4)
    assert tuple(rs.scored) == ("et", "netc", "snfh", "rc", "tc", "wt")
    assert rs.channels("regions") == 4 and rs.channels("labels") == 5
    y = np.array([0, 1, 2, 3, 4], dtype=np.uint8).reshape(5, 1, 1)
    wt, tc, et, rc = output_masks(y, rs)[:, :, 0, 0]
    assert wt.tolist() == [False, True, True, True, False]  # RC lies outside WT
    assert tc.tolist() == [False, True, False, True, False]
    assert et.tolist() == [False, False, False, True, False]
    assert rc.tolist() == [False, False, False, False, True]
    # painting the true outputs gives the label map back, for every profile
    for name in PROFILES:
        prs = region_set(name)
        yy = _labels(prs.values)
        np.testing.assert_array_equal(paint_labels(output_masks(yy, prs), prs), yy)


def test_predicted_labels_in_each_convention():
    probs = np.zeros((3, 1, 1, 3), dtype=np.float32)
    probs[:, 0, 0, 0] = (1, 1, 1)  # ET
    probs[:, 0, 0, 1] = (1, 1, 0)  # NCR
    probs[:, 0, 0, 2] = (1, 0, 0)  # ED
    legacy = region_set("brats2023-gli")
    for et in (3, 4):  # a 2023 model writes a 2021 case's ET as 4, as before
        got = predicted_source_labels(probs, "regions", legacy, et)
        np.testing.assert_array_equal(got, probabilities_to_labels(probs, "regions", et))
    post = region_set("brats2024-gli")
    p4 = np.zeros((4, 1, 1, 2), dtype=np.float32)
    p4[:, 0, 0, 0] = (0, 0, 0, 0.9)  # RC only
    p4[:, 0, 0, 1] = (1, 1, 1, 0.9)  # ET and RC: RC is painted last, so it wins
    assert predicted_source_labels(p4, "regions", post, 3).ravel().tolist() == [4, 4]
    # a softmax model: the argmax over the store values, RC = 4 included
    logits = np.zeros((5, 1, 1, 1), dtype=np.float32)
    logits[4] = 1.0
    assert predicted_source_labels(logits, "labels", post, 3).item() == 4
    # an nnU-Net dataset with nnU-Net's BraTS values (1 ED, 2 NCR, 3 ET): written back in them
    relabel = {0: 0, 1: 2, 2: 1, 3: 3}  # dataset value → profile value
    got = to_dataset_values(predicted_source_labels(probs, "regions", legacy, 3), relabel, legacy)
    assert got.ravel().tolist() == [3, 2, 1]
    with pytest.raises(ValueError, match=r"labels \[4\] of profile brats2024-gli"):
        to_dataset_values(predicted_source_labels(p4, "regions", post, 3), relabel, post)


def test_scored_masks_of_a_post_treatment_prediction():
    rs = region_set("brats2024-gli")
    probs = np.zeros((4, 1, 1, 1), dtype=np.float32)
    probs[:, 0, 0, 0] = (1, 0, 0, 0)  # WT only → SNFH
    masks = predicted_masks(probs, "regions", rs)[:, 0, 0, 0]
    assert dict(zip(rs.scored, masks.tolist(), strict=True)) == {
        "et": False, "netc": False, "snfh": True, "rc": False, "tc": False, "wt": True,
    }  # fmt: skip


def test_model_json_without_a_profile_is_brats2023():
    assert model_region_set({}).profile == "brats2023-gli"
    assert model_region_set({"profile": "gli-post"}).outputs[-1] == "rc"


def test_loss_targets_follow_the_profile_outputs():
    rs = region_set("brats2024-gli")
    y = torch.tensor([0, 1, 2, 3, 4], dtype=torch.uint8).reshape(1, 1, 5, 1, 1)
    t = labels_to_region_targets(y, rs.members)
    assert t.shape == (1, 4, 5, 1, 1)
    expected = output_masks(y[0].numpy(), rs).astype(np.float32)
    np.testing.assert_array_equal(t[0].numpy(), expected)
    loss = SegmentationLoss("regions", members=rs.members)
    good = (torch.from_numpy(expected)[None] * 20 - 10).float()
    bad = -good
    assert loss(good, y) < 0.05 < loss(bad, y)
