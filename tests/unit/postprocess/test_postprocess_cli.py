"""`bratslab postprocess apply` and the post-processing options of predict / evaluate-model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.cli import app

AFFINE = np.diag([1.0, 1.0, 1.5, 1.0])


@pytest.fixture
def runner(bratslab_home):
    return CliRunner()


def _seg(et_label=3):
    seg = np.zeros((20, 20, 16), np.uint8)
    seg[2:12, 2:12, 2:12] = 2
    seg[4:10, 4:10, 4:10] = 1
    seg[5:8, 5:8, 5:8] = et_label
    seg[17, 17, 14] = et_label  # a one-voxel island
    return seg


def test_apply_folder_keeps_geometry_and_names_bad_files(runner, tmp_path):
    pred, out = tmp_path / "pred", tmp_path / "out"
    pred.mkdir()
    nib.save(nib.Nifti1Image(_seg(3), AFFINE), pred / "case-a.nii.gz")
    nib.save(nib.Nifti1Image(_seg(4), AFFINE), pred / "case-b.nii.gz")
    (pred / "case-c.nii.gz").write_bytes(b"not a nifti" * 20)
    cfg = tmp_path / "postprocess.json"
    cfg.write_text(json.dumps({"config": {"min_size_wt": 2}, "fit": {}}))
    res = runner.invoke(app, ["postprocess", "apply", "--config", str(cfg), str(pred), str(out)])
    assert res.exit_code == 1, res.output
    assert "FAILED case-c" in res.stderr and "case-c.nii.gz" in res.stderr
    assert "2 written (min_size_wt=2)" in res.stdout
    for name, et in (("case-a", 3), ("case-b", 4)):
        img = nib.load(out / f"{name}.nii.gz")
        data = np.asarray(img.dataobj)
        np.testing.assert_allclose(img.affine, AFFINE)
        assert data[17, 17, 14] == 0 and data[6, 6, 6] == et  # island gone, ET convention kept
        expected = _seg(et)
        expected[17, 17, 14] = 0
        assert np.array_equal(data, expected)


def test_apply_with_an_invalid_config_exits_2_naming_the_key(runner, tmp_path):
    cfg = tmp_path / "pp.json"
    cfg.write_text(json.dumps({"min_size_wt": -1}))
    (tmp_path / "pred").mkdir()
    res = runner.invoke(
        app, ["postprocess", "apply", "-c", str(cfg), str(tmp_path / "pred"), str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "min_size_wt" in res.stderr and str(cfg) in res.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate-model"])
def test_postprocess_options_conflict_and_missing_file(runner, tmp_path, command):
    base = ["--model", str(tmp_path / "m")]
    base += (
        ["--input", str(tmp_path), "--output", str(tmp_path / "o")]
        if command == "predict"
        else ["--store", str(tmp_path)]
    )
    both = [command, *base, "--postprocess", str(tmp_path / "pp.json"), "--no-postprocess"]
    res = runner.invoke(app, both)
    assert res.exit_code == 2 and "not both" in res.stderr
    res = runner.invoke(app, [command, *base, "--postprocess", str(tmp_path / "pp.json")])
    assert res.exit_code == 2 and "pp.json: no such post-processing file" in res.stderr


def test_fit_rejects_bad_candidates(runner, tmp_path):
    res = runner.invoke(
        app,
        ["postprocess", "fit", "--model", "m", "--store", str(tmp_path), "--candidates", "0,x"],
    )
    assert res.exit_code == 2 and "--candidates" in res.stderr
