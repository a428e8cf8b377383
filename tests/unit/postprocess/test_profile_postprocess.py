"""Post-processing for a 2024+ profile's models: a minimum component size per region of the
profile (post-treatment glioma: ET, NETC, SNFH, RC, TC, WT), applied and fitted."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.data.profiles import get_profile
from bratslab.postprocess.apply import postprocess_labels
from bratslab.postprocess.config import FitConfig, PostprocessConfig
from bratslab.postprocess.fit import FitCase, fit_thresholds

POST = get_profile("brats2024-gli")


def _case() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) in post-treatment labels: a true tumour (ET in NETC in SNFH) and
    a true cavity; the prediction adds a 2-voxel RC speck and a 1-voxel ET speck far away."""
    ref = np.zeros((30, 30, 30), dtype=np.uint8)
    ref[4:14, 4:14, 4:14] = 2
    ref[6:12, 6:12, 6:12] = 1
    ref[8:10, 8:10, 8:10] = 3
    ref[18:26, 18:26, 18:26] = 4
    pred = ref.copy()
    pred[27, 2, 2:4] = 4  # RC false positive, 2 voxels
    pred[2, 27, 27] = 3  # ET false positive, 1 voxel
    return pred, ref


def test_min_size_per_region_removes_small_components_to_background():
    pred, ref = _case()
    cfg = PostprocessConfig(profile="gli-post", min_size={"rc": 3})
    out = postprocess_labels(pred, cfg)
    assert out[27, 2, 2] == 0 and out[27, 2, 3] == 0  # the speck is gone
    assert out[2, 27, 27] == 3  # ET has no threshold: kept
    assert np.array_equal(out[18:26, 18:26, 18:26], ref[18:26, 18:26, 18:26])  # the true cavity
    both = postprocess_labels(pred, PostprocessConfig(profile="gli", min_size={"rc": 3, "et": 2}))
    np.testing.assert_array_equal(both, ref)
    # the WT/TC/ET path would have read RC 4 as a BraTS 2021 ET; this one leaves it alone
    assert postprocess_labels(pred, PostprocessConfig(profile="gli")).tolist() == pred.tolist()


def test_fit_finds_thresholds_for_the_profile_regions():
    pred, ref = _case()
    gt = np.stack([np.isin(ref, members) for members in POST.regions.values()])
    cases = [FitCase("c", pred, gt, (1.0, 1.0, 1.0))]
    result = fit_thresholds(cases, FitConfig(candidates=[0, 2, 5], scale=1.0), profile="gli")
    cfg = result.config
    assert cfg.profile == "brats2024-gli"
    assert cfg.min_size.get("rc", 0) >= 3 and cfg.min_size.get("et", 0) >= 2
    assert result.before["rc"] < 1.0 and result.after["rc"] == pytest.approx(1.0)
    assert result.after["mean"] == pytest.approx(1.0) and result.before["mean"] < 1.0
    assert set(result.before) == {*POST.regions, "mean"}
    assert result.to_dict()["objective"] == "mean lesion-wise Dice (ET, NETC, SNFH, RC, TC, WT)"
    np.testing.assert_array_equal(postprocess_labels(pred, cfg), ref)


def test_cli_fits_written_post_treatment_predictions_per_region(tmp_path):
    """``postprocess fit --pred --ref --profile gli-post``: real .nii.gz files; a cavity speck
    added to every prediction is what the fitted RC size removes."""
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from bratslab.app.main import app

    runner = CliRunner()
    raw, pred = tmp_path / "raw", tmp_path / "pred"
    r = runner.invoke(app, ["data", "synth", str(raw), "--profile", "gli-post", "--cases", "2",
                            "--shape", "40", "40", "32"])  # fmt: skip
    assert r.exit_code == 0, r.output
    pred.mkdir()
    for seg in sorted(raw.rglob("*-seg.nii.gz")):
        img = nib.load(seg)
        labels = np.asarray(img.dataobj).astype(np.uint8)
        assert labels.max() == 4  # the synthetic cases have a cavity
        labels[0, 0, 0:2] = 4  # a 2-voxel cavity false positive in a corner
        case = seg.name.removesuffix("-seg.nii.gz")
        nib.save(nib.Nifti1Image(labels, img.affine), pred / f"{case}.nii.gz")
    out = tmp_path / "pp.json"
    args = ["postprocess", "fit", "--pred", str(pred), "--ref", str(raw), "--profile", "gli-post",
            "--candidates", "0,50,100", "-o", str(out)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["config"]["profile"] == "brats2024-gli" and doc["config"]["min_size"]["rc"] >= 3
    assert doc["fit"]["candidates"] == [0, 9, 18]  # scaled to the 40 x 40 x 32 volumes
    assert doc["fit"]["after"]["rc"] > doc["fit"]["before"]["rc"]
    r = runner.invoke(app, ["postprocess", "fit", "--model", "m", "--store", "s",
                            "--profile", "gli"])  # fmt: skip
    assert r.exit_code == 2 and "--profile goes with --pred and --ref" in r.output
