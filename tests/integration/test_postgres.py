"""A sweep whose MLflow store and Optuna study live in a real PostgreSQL server and whose Tune
experiment and trial checkpoints live in a real S3-compatible bucket (SeaweedFS,
``BRATSLAB_RAY_STORAGE=s3://...``), interrupted and resumed: ``bratslab sweep`` in a subprocess
(Ctrl-C once the first trial is recorded as done, a marker object in the bucket), then
``bratslab sweep --resume NAME``, which restores the experiment from the bucket.

Each driver runs in a subprocess with a Ray instance of its own: trials inherit the stores from
their driver's Ray job (``ensure_ray`` puts the settings into the job's runtime env), but never
the S3 keys, which every Ray process reads from its own environment (as on a cluster): the
session's Ray instance was started without them, a subprocess's instance starts with them. The
two drivers' Ray instances share nothing, so the resume can only find the experiment in the
bucket (the sweep folder has no ``tune/``).
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
from s3_fixture import s3_server  # noqa: F401  (the session's S3 server fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
NAME = "pg-sweep"
MODEL = "bratslab-pg-it"
PREFIX = "pg-it"  # BRATSLAB_RAY_STORAGE=s3://<bucket>/pg-it


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _objects(server, rel: str) -> list[str]:
    """Keys (relative to the sweep's prefix) of the objects under ``rel`` in the bucket."""
    from pyarrow import fs

    base = f"{server.bucket}/{PREFIX}/sweeps/{NAME}"
    sel = fs.FileSelector(f"{base}/{rel}", recursive=True, allow_not_found=True)
    infos = server.filesystem().get_file_info(sel)
    return [i.path[len(base) + 1 :] for i in infos if i.type == fs.FileType.File]


def _read(server, rel: str) -> str:
    key = f"{server.bucket}/{PREFIX}/sweeps/{NAME}/{rel}"
    with server.filesystem().open_input_stream(key) as f:
        return f.read().decode()


def _done_trials(server) -> set[str]:
    """Trials whose completion marker (``trials/<id>.json``) is in the bucket."""
    keys = _objects(server, "trials")
    return {Path(k).stem for k in keys if k.endswith(".json") and "attempts" not in k}


def _sweep(args: list[str], env: dict, log: Path, home: Path, done=None) -> int:
    """Run ``bratslab sweep ARGS``; with ``done``, Ctrl-C it once ``done()`` holds."""
    with log.open("w") as out:
        # A session of its own, so the SIGINT reaches this driver and nothing else.
        proc = subprocess.Popen(
            [str(BRATSLAB), "sweep", *args], env=env, cwd=home, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while done is not None and not done():
                assert proc.poll() is None, f"exited {proc.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"no trial done in 300 s:\n{_tail(log)}"
                time.sleep(0.2)
            if done is not None:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C does; Tune saves its state
            return proc.wait(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sweep_with_stores_in_postgres_and_s3_resumes(
    postgres,  # noqa: F811
    s3_server,  # noqa: F811
    tiny_store,
    tmp_path,
):
    import optuna
    from mlflow import MlflowClient

    home, artifacts = tmp_path / "home", tmp_path / "artifacts"
    home.mkdir()
    mlflow_uri, optuna_uri = postgres.url("mlflow"), postgres.url("optuna")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRATSLAB_"))}
    env.pop("RAY_ADDRESS", None)  # each driver starts its own Ray instance (module docstring)
    env.update(
        s3_server.env(),
        BRATSLAB_HOME=str(home),
        MLFLOW_TRACKING_URI=mlflow_uri,
        BRATSLAB_OPTUNA_STORAGE=optuna_uri,
        BRATSLAB_ARTIFACTS=str(artifacts),
        BRATSLAB_RAY_STORAGE=f"s3://{s3_server.bucket}/{PREFIX}",
        BRATSLAB_RAY_CPUS="6",  # 2 concurrent trials: 1 Tune slot + 1 Train worker each
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

    rc = _sweep(job, env, log1, home, done=lambda: _done_trials(s3_server))
    assert rc == 130, f"expected an interrupted sweep (130), got {rc}:\n{_tail(log1)}"
    done_before = _done_trials(s3_server)
    assert done_before
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["optuna"] == {"storage": optuna_uri, "study": NAME}
    assert manifest["ray_storage"] == f"s3://{s3_server.bucket}/{PREFIX}/sweeps/{NAME}"
    assert client.get_run(manifest["parent_run_id"]).info.status == "KILLED"
    # Tune's experiment state and every finished trial's checkpoint are objects in the bucket;
    # the sweep folder keeps only the driver's bookkeeping.
    assert any(k.startswith("tune/experiment_state") for k in _objects(s3_server, "tune"))
    for trial_id in done_before:
        keys = _objects(s3_server, f"train/{NAME}-{trial_id}")
        assert any(k.split("/")[2].startswith("epoch") and k.endswith("/model.pt") for k in keys)
    assert not {"tune", "train", "trials"} & {p.name for p in sweep_dir.iterdir()}

    rc = _sweep(["--resume", NAME], env, log2, home)
    assert rc == 0, _tail(log2)

    # Restored from the bucket: the same trials (a fresh experiment would have new trial ids),
    # and no trial that had completed before the interruption trained again (its marker in
    # the bucket, read by the trial wherever it ran, made it replay its result).
    assert done_before < _done_trials(s3_server) and len(_done_trials(s3_server)) == 3
    for trial_id in done_before:
        attempts = _read(s3_server, f"trials/{trial_id}.attempts.jsonl")
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
    # The winner was re-evaluated and registered from a local copy of its checkpoint in the
    # bucket; the other trials' best checkpoints stay s3:// URIs in the results table.
    assert "bratslab.best_checkpoint" not in champion.tags  # nothing machine-local
    assert f"trial {champion.tags['bratslab.trial_id']}" in champion.description
    copies = sweep_dir / "checkpoints" / champion.tags["bratslab.trial_id"]
    assert list(copies.rglob("model.pt")), f"no local copy of the winner in {copies}"
    assert f"s3://{s3_server.bucket}/{PREFIX}/sweeps/{NAME}/train/" in (
        (sweep_dir / "results.csv").read_text()
    )
