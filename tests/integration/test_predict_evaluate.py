"""Raw NIfTI → `bratslab predict` on a real local Ray → `bratslab evaluate` / `export rle`,
and `evaluate-model` logging tta/ metrics to a real MLflow (SQLite) run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.data.config import PreprocessConfig
from bratslab.data.synth import synthesize_dataset
from bratslab.models.config import ModelConfig
from bratslab.models.weights import save_model_dir
from bratslab.models.zoo import build_model

pytestmark = pytest.mark.integration

SHAPE = (48, 40, 32)
PRE = PreprocessConfig(min_size=32, num_folds=2)
BROKEN = "BraTS-GLI-00002-000"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    # Anisotropic 2023 cases (ET = 3) and a 2021 case (ET = 4).
    synthesize_dataset(root / "gli2023", 3, "brats2023", seed=3, shape=SHAPE, spacing=(1, 1, 1.5))
    synthesize_dataset(root / "gli2021", 1, "brats2021", seed=4, shape=SHAPE)
    # One damaged case: its FLAIR is cut short, which only shows when the data is read.
    (t2f,) = (root / "gli2023").rglob(f"{BROKEN}-t2f.nii.gz")
    t2f.write_bytes(t2f.read_bytes()[:400])
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 16]})
    # A job folder as the trainer leaves it: the run state file above the checkpoint.
    job = tmp_path_factory.mktemp("job")
    extra = {"preprocessing": PRE.model_dump(mode="json"), "patch_size": [32, 32, 32]}
    return save_model_dir(job / "checkpoint_000001", build_model(cfg).eval(), cfg, extra)


def test_predict_evaluate_export(raw, model_dir, tmp_path, ray_cluster, bratslab_home):
    runner = CliRunner()
    pred = tmp_path / "pred"
    args = ["predict", "--model", str(model_dir), "--input", str(raw), "--output", str(pred)]
    args += ["--tta", "flips", "--save-probabilities", "--uncertainty", "--workers", "2"]
    res = runner.invoke(app, args)
    # The damaged case fails (exit 1) and is named with its file; the others are written.
    assert res.exit_code == 1, res.output
    assert "3 written" in res.output and "1 failed" in res.output
    failures = json.loads((pred / "failures.json").read_text())["failures"]
    assert [f["case"] for f in failures] == [BROKEN]
    assert failures[0]["file"].endswith(f"{BROKEN}-t2f.nii.gz") and failures[0]["reason"]

    for seg in sorted(raw.rglob("*seg.nii.gz")):
        case = seg.name.removesuffix("-seg.nii.gz").removesuffix("_seg.nii.gz")
        if case == BROKEN:
            assert not (pred / f"{case}.nii.gz").exists()
            continue
        src, out = nib.load(seg), nib.load(pred / f"{case}.nii.gz")
        assert out.shape == src.shape == SHAPE
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        et = 4 if case.startswith("BraTS2021") else 3
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, et}
        prob = nib.load(pred / f"{case}_prob.nii.gz")
        assert prob.shape == (*SHAPE, 3)
        p = prob.get_fdata()
        assert p.min() >= 0.0 and p.max() <= 1.0
        assert nib.load(pred / f"{case}_std.nii.gz").shape == (*SHAPE, 3)
    assert not list(pred.glob(".*.tmp"))
    # --tta-path auto (the default): the actors measured the TTA paths once for this network,
    # device, precision and window, and cached the choice in the work directory.
    cache = json.loads((bratslab_home / "cache" / "tta_paths.json").read_text())["entries"]
    ours = [v for k, v in cache.items() if "window 32x32x32 | tta flips" in k]
    assert len(ours) == 1 and ours[0]["path"] in ("naive", "perview", "batched")

    # A rerun resumes: finished cases are skipped, only the broken one is tried again.
    res = runner.invoke(app, args)
    assert "0 written, 3 already done, 1 failed" in res.output, res.output

    metrics = tmp_path / "eval" / "metrics.csv"
    res = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(metrics)]
    )
    assert res.exit_code == 0, res.output
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "case",
        "region",
        "dice",
        "hd95",
        "nsd",
        "lesion_dice",
        "lesion_hd95",
        "tp",
        "fp",
        "fn",
    ]
    assert len(rows) == 4 * 3  # the case without a prediction is scored as empty
    broken = [r for r in rows if r["case"] == BROKEN and r["region"] == "wt"][0]
    assert float(broken["dice"]) == 0.0 and float(broken["hd95"]) == 374.0
    summary = json.loads(metrics.with_name("metrics.summary.json").read_text())
    assert summary["cases"] == 4 and summary["missing_predictions"] == [BROKEN]
    assert summary["failed"] == []  # a missing prediction is scored as empty, not a failure
    assert set(summary["regions"]) == {"wt", "tc", "et"}
    assert metrics.with_name("metrics.png").read_bytes()[:4] == b"\x89PNG"

    rle = tmp_path / "sub.csv"
    res = runner.invoke(app, ["export", "rle", str(pred), str(rle)])
    assert res.exit_code == 0, res.output
    assert "wrote 9 rows (3 cases)" in res.output
    assert len(rle.read_text().splitlines()) == 1 + 3 * 3


def test_evaluate_model_logs_tta_metrics(raw, model_dir, tmp_path, ray_cluster):
    from bratslab.data.preprocess_tasks import run_preprocess
    from bratslab.data.store import Store
    from bratslab.inference.model_eval import evaluate_model
    from bratslab.tracking import mlflow_runs

    store = tmp_path / "store"
    report = run_preprocess(raw, store, PRE, workers=2, progress=False)
    assert len(report.processed) == 3  # the damaged case is quarantined
    st = Store(store)
    fold = next(k for k in range(st.num_folds) if st.case_ids(fold=k, split="val"))

    run_id = mlflow_runs.start_run(experiment="evaluate-test", run_name="tiny")
    (model_dir.parent / "bratslab_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    metrics = evaluate_model(model_dir, store, fold, "flips", max_cases=1)
    for key in ("dice_wt", "dice_tc", "dice_et", "dice_mean", "lesion_dice_mean"):
        assert 0.0 <= metrics[f"tta/{key}"] <= 1.0
    assert metrics["tta/cases"] == 1.0
    logged = mlflow_runs.run_info(run_id)["metrics"]
    assert logged["tta/dice_mean"] == pytest.approx(metrics["tta/dice_mean"])
    assert logged["tta/lesion_dice_et"] == pytest.approx(metrics["tta/lesion_dice_et"])
