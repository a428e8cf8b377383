"""A sweep whose MLflow store and Optuna study live in a real PostgreSQL server, interrupted and
resumed: ``bratslab sweep`` in a subprocess (Ctrl-C once the first trial is recorded as done),
then ``bratslab sweep --resume NAME``.

The driver runs in a subprocess because trials inherit the stores from their *driver's* Ray job
(``ensure_ray`` puts the settings into the job's runtime env): this session's driver points at
the session's SQLite store, a subprocess that joins the session's Ray instance brings its own
PostgreSQL URIs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_fixture import postgres  # noqa: F401  (the session's PostgreSQL server fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
NAME = "pg-sweep"
MODEL = "bratslab-pg-it"


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _sweep(args: list[str], env: dict, log: Path, home: Path, interrupt: bool = False) -> int:
    """Run ``bratslab sweep ARGS``; with ``interrupt``, Ctrl-C it when a trial is done."""
    with log.open("w") as out:
        # A session of its own, so the SIGINT reaches this driver and nothing else.
        proc = subprocess.Popen(
            [str(BRATSLAB), "sweep", *args], env=env, cwd=home, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while interrupt and not list((home / "sweeps" / NAME / "trials").glob("*.json")):
                assert proc.poll() is None, f"exited {proc.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"no trial done in 300 s:\n{_tail(log)}"
                time.sleep(0.2)
            if interrupt:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C does; Tune saves its state
            return proc.wait(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sweep_with_mlflow_and_optuna_in_postgres_resumes(
    postgres,  # noqa: F811
    ray_cluster,
    tiny_store,
    tmp_path,
):
    import optuna
    from mlflow import MlflowClient

    home, artifacts = tmp_path / "home", tmp_path / "artifacts"
    home.mkdir()
    mlflow_uri, optuna_uri = postgres.url("mlflow"), postgres.url("optuna")
    env = dict(
        os.environ,
        BRATSLAB_HOME=str(home),
        MLFLOW_TRACKING_URI=mlflow_uri,
        BRATSLAB_OPTUNA_STORAGE=optuna_uri,
        BRATSLAB_ARTIFACTS=str(artifacts),
        RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address,  # the session's instance
    )
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    # A database-backed store has no artifact root of its own (MLflow would use ./mlruns of
    # whichever process creates the experiment): the experiment is made with one, as an
    # operator of a shared store does.
    client.create_experiment(MODEL, artifact_location=(artifacts / MODEL).as_uri())
    job = [
        str(ROOT / "jobs/sweep_smoke.yaml"),
        *("--set", f"data.store={tiny_store}", "--set", "data.max_val_cases=1"),
        *("--set", "training.epochs=1", "--set", "training.steps_per_epoch=2"),
        *("--set", f"sweep.space={ROOT / 'search_spaces/smoke.yaml'}"),
        *("--set", f"sweep.name={NAME}", "--set", "sweep.num_trials=3"),
        *("--set", "sweep.max_concurrent=2", "--set", "sweep.top_k=1", "--set", "sweep.tta=none"),
        *("--set", f"tracking.experiment={MODEL}"),  # no registry_name: the experiment names it
    ]
    sweep_dir = home / "sweeps" / NAME
    log1, log2 = tmp_path / "sweep.log", tmp_path / "resume.log"

    rc = _sweep(job, env, log1, home, interrupt=True)
    assert rc == 130, f"expected an interrupted sweep (130), got {rc}:\n{_tail(log1)}"
    done_before = {p.stem for p in (sweep_dir / "trials").glob("*.json")}
    assert done_before
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["optuna"] == {"storage": optuna_uri, "study": NAME}
    assert client.get_run(manifest["parent_run_id"]).info.status == "KILLED"

    rc = _sweep(["--resume", NAME], env, log2, home)
    assert rc == 0, _tail(log2)

    # No trial that had completed before the interruption trained again.
    for trial_id in done_before:
        attempts = (sweep_dir / "trials" / f"{trial_id}.attempts.jsonl").read_text()
        assert len(attempts.splitlines()) == 1, (trial_id, attempts)
    # The Optuna study is in PostgreSQL (and nowhere beside the sweep), all three trials done.
    study = optuna.load_study(study_name=NAME, storage=optuna_uri)
    assert len(study.trials) == 3
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert not (sweep_dir / "optuna.db").exists()

    # MLflow in PostgreSQL: the parent run, one nested run per trial, the registered champion.
    assert not (home / "mlflow.db").exists()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    parent = client.get_run(manifest["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["bratslab.sweep"] == NAME
    assert {"results.csv", "optuna_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    assert list((artifacts / MODEL).rglob("results.csv"))  # artifacts in BRATSLAB_ARTIFACTS
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    assert {c.data.tags["bratslab.trial_id"] for c in children} >= done_before
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["bratslab.sweep"] == NAME
    assert manifest["finished"]["registered"] == f"{MODEL}/{champion.version}"
    assert champion.tags["bratslab.trial_id"] == manifest["finished"]["winner_trial"]
