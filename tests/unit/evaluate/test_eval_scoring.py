"""Folder scoring: CSV rows, summary, missing predictions and clear errors on bad files."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from bratslab.evaluate.scoring import COLUMNS, evaluate_folder, score_case, source_regions

SHAPE = (24, 24, 16)


def _write(path, data, zooms=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    nib.save(img, path)


def _seg(et_label=3):
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:14, 4:14, 3:11] = 2
    seg[6:12, 6:12, 5:9] = 1
    seg[8:10, 8:10, 6:8] = et_label
    return seg


def _raw_case(root, case, seg, zooms=(1.0, 1.0, 1.0)):
    img = np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1
    for m in ("t1n", "t1c", "t2w", "t2f"):
        _write(root / case / f"{case}-{m}.nii.gz", img, zooms)
    _write(root / case / f"{case}-seg.nii.gz", seg, zooms)


def test_source_regions_both_conventions():
    r3 = source_regions(_seg(3))
    r4 = source_regions(_seg(4))
    assert np.array_equal(r3, r4)
    assert r3[2].sum() == 8 and r3[1].sum() == 6 * 6 * 4 and r3[0].sum() == 10 * 10 * 8


def test_evaluate_folder_rows_summary_and_missing(tmp_path):
    raw, pred = tmp_path / "raw", tmp_path / "pred"
    _raw_case(raw, "BraTS-GLI-00001-000", _seg(), zooms=(1.0, 1.0, 2.0))
    _raw_case(raw, "BraTS-GLI-00002-000", _seg())
    _write(pred / "BraTS-GLI-00001-000.nii.gz", _seg())  # perfect; case 2 has no prediction
    out = tmp_path / "m" / "metrics.csv"
    result = evaluate_folder(pred, raw, "gli", out, progress=False)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 6
    perfect = [r for r in rows if r["case"] == "BraTS-GLI-00001-000"]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in perfect)
    wt = perfect[0]
    assert (wt["tp"], wt["fp"], wt["fn"]) == ("1", "0", "0")
    # ET is 8 voxels: 16 mm³ at 2 mm spacing → under T=50, so not counted, lesion Dice 1.
    et = [r for r in perfect if r["region"] == "et"][0]
    assert et["fn"] == "0" and float(et["lesion_dice"]) == 1.0
    missing = [r for r in rows if r["case"] == "BraTS-GLI-00002-000" and r["region"] == "wt"][0]
    assert float(missing["dice"]) == 0.0 and float(missing["lesion_hd95"]) == 374.0
    assert result.missing == ["BraTS-GLI-00002-000"]
    summary = json.loads(out.with_name("metrics.summary.json").read_text())
    assert summary["regions"]["wt"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["regions"]["wt"]["dice"]["median"] == pytest.approx(0.5)
    assert out.with_name("metrics.png").is_file()


def test_bad_prediction_files_are_named(tmp_path):
    raw = tmp_path / "raw"
    _raw_case(raw, "BraTS-GLI-00001-000", _seg())
    ref = raw / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz"
    wrong_shape = tmp_path / "p1.nii.gz"
    _write(wrong_shape, np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="p1.nii.gz: shape"):
        score_case("c", wrong_shape, ref)
    bad_labels = tmp_path / "p2.nii.gz"
    _write(bad_labels, np.full(SHAPE, 7, np.uint8))
    with pytest.raises(ValueError, match=r"p2.nii.gz: unexpected labels \[7\]"):
        score_case("c", bad_labels, ref)
    truncated = tmp_path / "p3.nii.gz"
    _write(truncated, _seg())
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="p3.nii.gz: cannot read"):
        score_case("c", truncated, ref)
    with pytest.raises(ValueError, match="unknown challenge"):
        evaluate_folder(tmp_path, raw, "lung", progress=False)
