"""`bratslab evaluate --metric brats2023 --profile P`: every region of a challenge profile (real
.nii.gz files): post-treatment glioma scores ET, NETC, SNFH, RC, TC and WT, RC outside WT."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.evaluate.scoring import evaluate_folder

SHAPE = (32, 32, 24)


def _post_treatment_seg(shift: int) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[6 + shift : 18 + shift, 6:18, 4:16] = 2  # SNFH
    seg[9 + shift : 15 + shift, 9:15, 7:13] = 1  # NETC
    seg[11 + shift : 13 + shift, 11:13, 9:11] = 3  # ET
    seg[22:28, 22:28, 14:20] = 4  # RC, away from the tumour
    return seg


def _folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    pred_dir.mkdir()
    for i in range(2):
        cid = f"BraTS-GLI-0000{i}-100"
        folder = ref_dir / cid
        folder.mkdir(parents=True)
        for m in ("t1n", "t1c", "t2w", "t2f"):
            nib.save(
                nib.Nifti1Image(np.ones(SHAPE, np.int16), np.eye(4)), folder / f"{cid}-{m}.nii.gz"
            )
        ref = _post_treatment_seg(i)
        nib.save(nib.Nifti1Image(ref, np.eye(4)), folder / f"{cid}-seg.nii.gz")
        pred = ref.copy()
        if i == 1:
            pred[pred == 4] = 0  # the cavity missed
        nib.save(nib.Nifti1Image(pred, np.eye(4)), pred_dir / f"{cid}.nii.gz")
    return pred_dir, ref_dir


def test_every_region_of_the_profile_is_scored(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    result = evaluate_folder(pred_dir, ref_dir, profile="gli", progress=False)
    by = {(r["case"], r["region"]): r for r in result.rows}
    assert {r for _, r in by} == {"et", "netc", "snfh", "rc", "tc", "wt"}
    missed = "BraTS-GLI-00001-100"
    assert by[(missed, "rc")]["dice"] == 0.0 and by[(missed, "rc")]["fn"] == 1
    assert by[(missed, "wt")]["dice"] == 1.0  # RC is not part of WT
    assert by[("BraTS-GLI-00000-100", "rc")]["lesion_dice"] == 1.0
    assert result.summary["challenge"] == "brats2024-gli"
    assert list(result.summary["regions"]) == ["et", "netc", "snfh", "rc", "tc", "wt"]


def test_cli_writes_the_profile_regions(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    out = tmp_path / "m.csv"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(pred_dir),
            "--ref",
            str(ref_dir),
            "--profile",
            "gli",
            "-o",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    assert "RC" in res.output and "SNFH" in res.output
    summary = json.loads(out.with_name("m.summary.json").read_text())
    assert summary["regions"]["rc"]["dice"]["mean"] == 0.5
    assert out.with_name("m.png").stat().st_size > 0
    # a label outside the profile is named with its file
    bad = pred_dir / "BraTS-GLI-00000-100.nii.gz"
    seg = np.asarray(nib.load(bad).dataobj).copy()
    seg[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(seg, np.eye(4)), bad)
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(pred_dir),
            "--ref",
            str(ref_dir),
            "--profile",
            "brats2023-gli",
            "-o",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 1 and "outside the brats2023-gli convention" in res.output


def test_without_a_profile_rc_is_never_read_as_et(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    result = evaluate_folder(pred_dir, ref_dir, progress=False)
    assert result.rows == [] and len(result.failures) == 2
    assert all("give --profile brats2024-gli" in f["reason"] for f in result.failures)


def test_missing_extra_is_named(monkeypatch, tmp_path):
    # Runs without panoptica installed too: the error must name the extra to install.
    from bratslab.evaluate import panoptica_metric

    panoptica_metric._build_evaluator.cache_clear()
    monkeypatch.setitem(sys.modules, "panoptica", None)  # as if not installed
    try:
        with pytest.raises(panoptica_metric.MissingExtraError, match=r"bratslab\[panoptica\]"):
            panoptica_metric.build_evaluator("gli")
        pred_dir, ref_dir = _folders(tmp_path)
        args = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--metric", "panoptica"]
        res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m.csv")])
        assert res.exit_code == 2 and "pip install 'bratslab[panoptica]'" in res.output
    finally:
        panoptica_metric._build_evaluator.cache_clear()
