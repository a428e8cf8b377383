"""Cross-validation to ensemble, end to end on the session's Ray instance and MLflow store:
``train --folds 0,1 --max-parallel 2`` (two concurrent Ray Train runs, from driver threads,
under a parent run), a rerun that trains nothing, ``models register --ensemble --cv-run``, and
``predict`` with the ensemble version. About 2 minutes on a heavily loaded 2-core machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
NAME = "cv-it"


def test_folds_train_under_a_parent_run_and_register_as_an_ensemble_that_predicts(
    ray_cluster, tiny_store, bratslab_home, tmp_path
):
    from bratslab.app.main import app
    from bratslab.data.synth import synthesize_dataset
    from bratslab.tracking import registry
    from bratslab.tracking.mlflow_runs import run_info

    runner = CliRunner()
    train = ["train", str(JOB), "--name", NAME, "--folds", "0,1", "--max-parallel", "2",
             "--set", f"data.store={tiny_store}", "--set", "training.epochs=1",
             "--set", "training.steps_per_epoch=2", "--set", "data.max_val_cases=1",
             "--set", "scaling.num_workers=1"]  # fmt: skip
    r = runner.invoke(app, train)
    assert r.exit_code == 0, r.output
    state = bratslab_home / "ray_results" / f"{NAME}-cv" / "bratslab_cv.json"
    parent_id = json.loads(state.read_text())["mlflow_run_id"]
    parent = run_info(parent_id)
    assert parent["status"] == "FINISHED"
    assert parent["tags"]["bratslab.kind"] == "cv"
    assert parent["tags"]["bratslab.cv.folds"] == "0,1"
    for key in ("val/dice_mean", "val/lesion_dice_mean", "val/dice_wt", "val/lesion_dice_et"):
        assert {f"cv/fold0/{key}", f"cv/fold1/{key}", f"cv/mean/{key}", f"cv/std/{key}"} <= set(
            parent["metrics"]
        ), key

    r = runner.invoke(app, train)  # the same command again: both folds are finished
    assert r.exit_code == 0, r.output
    assert r.output.count("finished-before") == 2
    assert json.loads(state.read_text())["mlflow_run_id"] == parent_id

    r = runner.invoke(app, ["models", "register", "--ensemble", f"{NAME}-ens",
                            "--cv-run", parent_id])  # fmt: skip
    assert r.exit_code == 0, r.output
    info = registry.get_version(f"{NAME}-ens", version=1)
    assert info.tags["bratslab.ensemble.members"] == "fold0,fold1"
    assert "bratslab.sha256.members.fold1.model_pt" in info.tags

    synthesize_dataset(tmp_path / "raw", 1, shape=(48, 48, 40), seed=7)
    r = runner.invoke(app, ["predict", "--model", f"models:/{NAME}-ens/1",
                            "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "pred"),
                            "--tta", "none", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
