"""`bratslab postprocess apply` and the post-processing options of predict / evaluate-model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app

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


SHAPE = (48, 48, 40)  # larger than the crop around tumour and island


def _ref_case(root, case, seg):
    """A raw BraTS 2023 case folder: four modality files and the reference seg."""
    folder = root / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    for m in ("t1n", "t1c", "t2w", "t2f"):
        img = rng.integers(1, 100, SHAPE).astype(np.int16)
        nib.save(nib.Nifti1Image(img, AFFINE), folder / f"{case}-{m}.nii.gz")
    nib.save(nib.Nifti1Image(seg, AFFINE), folder / f"{case}-seg.nii.gz")


def _tumour_seg(et_label=3):
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:16, 4:16, 4:14] = 2
    seg[6:14, 6:14, 6:12] = 1
    seg[8:12, 8:12, 7:11] = et_label
    return seg


def _written_predictions(tmp_path):
    """Three reference cases; predictions equal to the reference plus one 8-voxel oedema
    island far from the tumour (case-b's in the BraTS 2021 convention, ET = 4); case-c has
    no prediction."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    pred.mkdir()
    for case, et in (("case-a", 3), ("case-b", 4), ("case-c", 3)):
        _ref_case(ref, case, _tumour_seg())
        if case == "case-c":
            continue
        p = _tumour_seg(et)
        p[30:32, 30:32, 24:26] = 2
        nib.save(nib.Nifti1Image(p, AFFINE), pred / f"{case}.nii.gz")
    return pred, ref


def test_fit_on_written_predictions_removes_islands_and_names_missing_cases(runner, tmp_path):
    """`postprocess fit --pred --ref`: fitted on the predictions already written (as nnU-Net
    fits on out-of-fold predictions); a case without a prediction is named and left out (exit
    1); the candidates scale with the whole volume, not the crop the fit works in."""
    from bratslab.postprocess.config import DEFAULT_CANDIDATES, REFERENCE_VOXELS

    pred, ref = _written_predictions(tmp_path)
    out = tmp_path / "pp.json"
    res = runner.invoke(
        app, ["postprocess", "fit", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]
    )
    assert res.exit_code == 1, res.output
    assert "LEFT OUT case-c" in res.stderr and "no prediction" in res.stderr
    doc = json.loads(out.read_text())
    assert doc["fit"]["cases"] == ["case-a", "case-b"]
    assert doc["fit"]["pred"] == str(pred) and doc["fit"]["ref"] == str(ref)
    scale = (np.prod(SHAPE) / REFERENCE_VOXELS) ** (1 / 3)
    expected = sorted({0 if c == 0 else max(1, round(c * scale)) for c in DEFAULT_CANDIDATES})
    assert doc["fit"]["candidates"] == expected
    assert doc["config"]["min_size_wt"] > 8  # the islands go ...
    assert doc["fit"]["before"]["wt"] == pytest.approx(0.5)  # one true lesion, one false
    assert doc["fit"]["after"] == pytest.approx({"wt": 1.0, "tc": 1.0, "et": 1.0, "mean": 1.0})


def test_fit_on_written_predictions_scores_as_on_whole_volumes(tmp_path):
    """The folder fit crops each case around its tumours; its scores equal those of the same
    fit on the whole volumes."""
    from bratslab.evaluate.scoring import source_regions
    from bratslab.inference.postprocess_fit import fit_folder
    from bratslab.postprocess.config import FitConfig
    from bratslab.postprocess.fit import FitCase, fit_thresholds

    pred, ref = _written_predictions(tmp_path)
    grid = FitConfig(candidates=[0, 4, 16], scale=1.0)
    folder = fit_folder(pred, ref, grid)
    assert [f["case"] for f in folder.failures] == ["case-c"]
    whole = []
    for case in ("case-a", "case-b"):
        p = np.asarray(nib.load(pred / f"{case}.nii.gz").dataobj).astype(np.uint8)
        p[p == 4] = 3
        gt = np.asarray(nib.load(ref / case / f"{case}-seg.nii.gz").dataobj)
        whole.append(FitCase(case, p, source_regions(gt), (1.0, 1.0, 1.5)))
    full = fit_thresholds(whole, grid)
    assert folder.result.config == full.config and folder.result.config.min_size_wt == 16
    assert folder.result.before == pytest.approx(full.before)
    assert folder.result.after == pytest.approx(full.after)


def test_fit_needs_a_model_and_store_or_predictions_and_references(runner, tmp_path):
    res = runner.invoke(app, ["postprocess", "fit", "--pred", str(tmp_path)])
    assert res.exit_code == 2 and "--pred and --ref" in res.stderr
    res = runner.invoke(app, ["postprocess", "fit", "--model", "m"])
    assert res.exit_code == 2 and "--model and --store" in res.stderr
    pred, ref = _written_predictions(tmp_path)
    res = runner.invoke(
        app, ["postprocess", "fit", "--pred", str(pred), "--ref", str(ref), "--stress", "1"]
    )
    assert res.exit_code == 2 and "--stress needs --model and --store" in res.stderr
