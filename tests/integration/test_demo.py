"""`bratslab demo` (what `make demo` runs), reduced, as a newcomer runs it: a subprocess in an
empty folder with no bratslab, MLflow or Ray variables set, so the work folder is the relative
default ``./bratslab-work`` and every Tune trial must still log to its ``mlflow.db``."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from test_readme_journey import NOT_ON_CONSOLE, clean_env

from bratslab.shutdown import STOP_REASON_TAG
from bratslab.tracking import mlflow_runs, registry
from bratslab.tune.trial_states import PRUNED, PRUNED_AT_TAG

pytestmark = pytest.mark.integration


def test_reduced_demo_runs_the_whole_pipeline(tmp_path):
    argv = [
        "bratslab", "demo",
        "--cases", "5",  # 5 folds of 1 case: post-processing is fitted on 1 (and its copy)
        "--holdout", "1",
        "--shape", "48", "48", "40",
        "--set", "training.epochs=2",
        "--set", "training.steps_per_epoch=2",
        "--set", "data.max_val_cases=1",
        "--set", "sweep.top_k=1",
        # The 3 trials at once (3 x (1 Tune slot + 1 Train worker) = the 6 CPUs of the demo's
        # Ray) instead of 2 then 1: most of a trial is its processes starting, so a third
        # trial started after the first two adds a whole trial start-up to the sweep.
        "--set", "sweep.max_concurrent=3",
    ]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=1200
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]

    work = tmp_path / "bratslab-work"
    out = work / "demo"
    # bratslab's own lines only; Ray's, MLflow's and Optuna's are in the demo's log file
    for bad in NOT_ON_CONSOLE:
        assert bad not in output, f"demo printed {bad!r}:\n{output}"
    assert "pid=" in (out / "bratslab.log").read_text()
    # Every trial logged to the one store in ./bratslab-work, none to its own working folder.
    assert sorted(tmp_path.rglob("mlflow.db")) == [work / "mlflow.db"]
    uri = f"sqlite:///{work / 'mlflow.db'}"

    # the held-out case was predicted in source geometry and scored per region
    assert len(list((out / "pred").glob("*.nii.gz"))) == 1
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["region"] for r in rows) == ["et", "tc", "wt"]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)

    # a champion is registered in ./bratslab-work/mlflow.db, named after the job's experiment
    assert [m.name for m in registry.list_models(uri=uri)] == ["bratslab-demo"]
    champion = registry.get_version("bratslab-demo", alias="champion", uri=uri)
    assert "tta/dice_mean" in champion.tags
    # post-processing was fitted on validation cases and stored on the champion's version
    assert json.loads(champion.tags["bratslab.postprocess"]).keys() >= {"min_size_wt"}
    # ... on the validation cases and a stressed copy of each, as the CPU recipe fits
    fitted = json.loads((out / "postprocess.json").read_text())["fit"]["cases"]
    assert fitted and all(f"{c}~stress1" in fitted for c in fitted if "~" not in c)
    # the trials compared all three architectures
    assert "architecture" in output
    for arch in ("unet", "segresnet", "mednext"):
        assert arch in output

    parent = mlflow_runs.run_info(champion.run_id, uri=uri)["tags"]["mlflow.parentRunId"]
    champion_run = mlflow_runs.client(uri).get_run(champion.run_id)
    # every trial ends FINISHED: one ASHA pruned says so (and when), none looks like a crash
    trials = mlflow_runs.client(uri).search_runs(
        [champion_run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(trials) == 3
    for run in trials:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags)
        reason = run.data.tags.get(STOP_REASON_TAG)
        assert reason in (None, PRUNED), run.data.tags
        if reason == PRUNED:
            assert 1 <= int(run.data.tags[PRUNED_AT_TAG]) < 2
    pruned = sum(r.data.tags.get(STOP_REASON_TAG) == PRUNED for r in trials)
    assert f"3 trials: {3 - pruned} completed, {pruned} pruned by ASHA, 0 failed" in output

    # the report PNG is on disk and logged to the sweep's parent run
    report = out / "report.png"
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [a.path for a in mlflow_runs.client(uri).list_artifacts(parent, "report")]
    assert names == ["report/report.png"]
