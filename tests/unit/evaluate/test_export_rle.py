"""Kaggle-style RLE: documented order, round trip, and the CSV over a prediction folder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bratslab.evaluate.export import (
    export_rle,
    label_masks,
    read_rle_csv,
    rle_decode,
    rle_encode,
)


def test_rle_order_is_fortran_and_one_based():
    m = np.zeros((3, 2, 2), dtype=bool)
    m[0, 0, 0] = m[1, 0, 0] = True  # flat (Fortran) indices 0 and 1 → "1 2"
    m[2, 1, 1] = True  # last voxel: index 11 → "12 1"
    assert rle_encode(m) == "1 2 12 1"
    assert rle_encode(np.zeros((2, 2, 2), bool)) == ""
    assert rle_encode(np.ones((2, 2, 2), bool)) == "1 8"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_round_trip(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((7, 5, 6)) > 0.6
    assert np.array_equal(rle_decode(rle_encode(m), m.shape), m)
    empty = np.zeros((4, 4, 4), bool)
    assert np.array_equal(rle_decode(rle_encode(empty), empty.shape), empty)


def test_rle_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="odd number"):
        rle_decode("1 2 3", (4, 4))
    with pytest.raises(ValueError, match="past the volume"):
        rle_decode("15 3", (4, 4))
    with pytest.raises(ValueError, match="overlap"):
        rle_decode("1 5 3 2", (4, 4))
    with pytest.raises(ValueError, match=">= 1"):
        rle_decode("0 2", (4, 4))


def test_export_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pred = tmp_path / "pred"
    pred.mkdir()
    labels = {}
    for case, et in (("BraTS2021_00001", 4), ("BraTS-GLI-00002-000", 3)):
        lab = rng.choice(np.array([0, 1, 2, et], np.uint8), size=(9, 8, 7), p=[0.7, 0.1, 0.1, 0.1])
        nib.save(nib.Nifti1Image(lab, np.eye(4)), pred / f"{case}.nii.gz")
        labels[case] = lab
    # Probability maps beside the masks are not exported.
    nib.save(nib.Nifti1Image(np.zeros((9, 8, 7), np.float32), np.eye(4)), pred / "x_prob.nii.gz")
    out = tmp_path / "sub.csv"
    report = export_rle(pred, out)
    assert (report.rows, report.cases, report.failures) == (6, sorted(labels), [])
    assert out.read_text().splitlines()[0] == "id,case,region,shape,rle"
    decoded = read_rle_csv(out)
    assert len(decoded) == 6
    for case, lab in labels.items():
        for region, mask in label_masks(lab).items():
            assert np.array_equal(decoded[(case, region)], mask)
    assert export_rle(pred, tmp_path / "labels.csv", by="labels").rows == 6
    by_label = read_rle_csv(tmp_path / "labels.csv")
    assert np.array_equal(by_label[("BraTS2021_00001", "et")], labels["BraTS2021_00001"] == 4)


def test_export_with_a_profile_writes_its_regions_and_names_foreign_labels(tmp_path):
    """Post-treatment glioma: six regions (RC 4 outside WT, not read as a 2021 ET), or its four
    labels by name; a map with a value the profile lacks is named and left out, the rest go."""
    rng = np.random.default_rng(1)
    pred = tmp_path / "pred"
    pred.mkdir()
    lab = rng.choice(np.arange(5, dtype=np.uint8), size=(9, 8, 7))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), pred / "BraTS-GLI-00003-101.nii.gz")
    out = tmp_path / "post.csv"
    report = export_rle(pred, out, profile="gli-post")
    assert report.cases == ["BraTS-GLI-00003-101"] and report.rows == 6 and not report.failures
    decoded = read_rle_csv(out)
    case = "BraTS-GLI-00003-101"
    assert np.array_equal(decoded[(case, "rc")], lab == 4)
    assert np.array_equal(decoded[(case, "wt")], (lab >= 1) & (lab <= 3))
    assert np.array_equal(decoded[(case, "tc")], (lab == 1) | (lab == 3))
    assert np.array_equal(decoded[(case, "et")], lab == 3)
    export_rle(pred, tmp_path / "labels.csv", by="labels", profile="gli-post")
    names = {region for _, region in read_rle_csv(tmp_path / "labels.csv")}
    assert names == {"netc", "snfh", "et", "rc"}
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        export_rle(pred, tmp_path / "x.csv", profile="nope")
    # a 2023 profile has no label 4: that map is named and left out, the others are written
    nib.save(nib.Nifti1Image(np.ones((9, 8, 7), np.uint8), np.eye(4)), pred / "ok.nii.gz")
    report = export_rle(pred, tmp_path / "gli2023.csv", profile="brats2023-gli")
    assert report.cases == ["ok"] and report.rows == 3
    assert [f["case"] for f in report.failures] == ["BraTS-GLI-00003-101"]
    assert "labels [4] outside the brats2023-gli convention" in report.failures[0]["reason"]
