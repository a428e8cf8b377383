"""Ray Train checkpoints and MLflow artifacts in object storage, against a real S3-compatible
server (SeaweedFS, s3_fixture) and a real ``mlflow server`` (mlflow_server), and ``bratslab
train`` stopped by SIGTERM (``bratslab jobs stop``, Kubernetes/Slurm preemption) then rerun.

``bratslab train`` runs as a subprocess with only the ``AWS_*`` variables pointing it at the
server (``BRATSLAB_RAY_STORAGE=s3://...``) and ``MLFLOW_TRACKING_URI`` at an ``mlflow server``
on 127.0.0.1 with a SQLite backend and proxied artifacts in the same bucket
(``--serve-artifacts --artifacts-destination s3://<bucket>/mlflow-artifacts``; the S3 endpoint
and keys are given to the server only). It is signalled after its first checkpoint: it exits
promptly with 143 and leaves its MLflow run KILLED with the reason. The checkpoints are objects
in the bucket, the job's own files stay in the local ``$BRATSLAB_HOME/ray_results/<name>``.
Rerunning the same command resumes after the checkpoint in the bucket and finishes the same
number of epochs, each logged once; the MLflow run finishes with the best checkpoint's ``s3://``
URI as a tag and the best checkpoint logged as a model; the run's artifacts (job, learning
curve) and the model are objects under the server's prefix, none is on the server's disk, and
the model loads back through the server, with no S3 credentials, equal to the checkpoint. A
third run under the same name with more epochs is refused: a FINISHED run is a record.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow_server import mlflow_server
from s3_fixture import s3_server  # noqa: F401  (the session's S3 server fixture)

pytestmark = pytest.mark.integration

BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
PREFIX = "ray_results"
ARTIFACTS = "mlflow-artifacts"  # the tracking server's prefix in the bucket
PROXIED = "mlflow-artifacts:/"  # artifact URIs of a server with --serve-artifacts
EPOCHS = 4
STEPS = 2  # training.steps_per_epoch
STOP_WITHIN_S = 60  # SIGTERM -> process gone (MLflow update + local Ray teardown)


@pytest.fixture
def tracking_server(s3_server, tmp_path):  # noqa: F811
    """``mlflow server`` with its artifacts in the bucket; yields (URL, the server's folder)."""
    root = tmp_path / "mlflow-server"
    dest = f"s3://{s3_server.bucket}/{ARTIFACTS}"
    with mlflow_server(root, dest, s3_server.mlflow_env()) as url:
        yield url, root


def _env(server, home: Path, tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRATSLAB_"))}
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)
    env.pop("RAY_ADDRESS", None)
    env.update(server.env(), BRATSLAB_HOME=str(home), BRATSLAB_RAY_CPUS="4")
    env["BRATSLAB_RAY_STORAGE"] = f"s3://{server.bucket}/{PREFIX}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _argv(tiny_store: Path, *sets: str) -> list[str]:
    args = [str(BRATSLAB), "train", str(JOB), "--set", f"data.store={tiny_store}"]
    # One worker and one validation case: the runs' cost is mostly Ray starting.
    sets = (f"training.steps_per_epoch={STEPS}", "training.val_sw_batch_size=2", *sets)
    sets = ("scaling.num_workers=1", "data.max_val_cases=1", *sets)
    for s in (f"training.checkpoints_to_keep={EPOCHS}", *sets):
        args += ["--set", s]
    return args


def _train(
    tiny_store: Path, env, cwd: Path, *sets: str, returncode: int = 0
) -> subprocess.CompletedProcess:
    args = _argv(tiny_store, *sets)
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == returncode, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _train_then_sigterm(tiny_store: Path, env, cwd: Path, log_file: Path, *sets: str) -> str:
    """``bratslab train`` signalled once ``log_file`` has its first epoch's line (the Train
    controller appends it after the epoch's checkpoint is registered and persisted): it exits
    143 within ``STOP_WITHIN_S``, saying so. Returns its stderr."""
    proc = subprocess.Popen(
        _argv(tiny_store, *sets), env=env, cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a failed test can clean it up
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (log_file.is_file() and log_file.read_text().splitlines()):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"train exited {proc.returncode} before epoch 1:\n{out}\n{err}")
            assert time.monotonic() < deadline, f"no epoch line in {log_file} within 300 s"
            time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # what `bratslab jobs stop` and Kubernetes send
        out, err = proc.communicate(timeout=STOP_WITHIN_S)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 143, f"exit {proc.returncode} after {stopped_in:.1f} s:\n{out}{err}"
    assert err.count("stopped by SIGTERM") == 1  # one line says it (the run id is in the log)
    assert "View run" not in out + err  # MLflow's run-URL lines stay off a quiet console
    return err


def _checkpoints(server) -> dict[str, set[str]]:
    """Checkpoint folder (``epoch0001-<id>``) → its file names, for the job ``smoke``."""
    from pyarrow import fs

    base = f"{server.bucket}/{PREFIX}/smoke"
    infos = server.filesystem().get_file_info(fs.FileSelector(base, recursive=True))
    out: dict[str, set[str]] = {}
    for info in infos:
        rel = info.path[len(base) + 1 :].split("/")
        if len(rel) > 1 and info.type == fs.FileType.File:  # not Ray's snapshot file
            out.setdefault(rel[0], set()).add("/".join(rel[1:]))
    return out


def _key_prefix(location: str) -> str:
    """A proxied artifact location's prefix in the bucket: ``mlflow-artifacts:/<path>`` is
    ``s3://<bucket>/mlflow-artifacts/<path>``."""
    assert location.startswith(PROXIED), location  # proxied: the client never sees S3
    return f"{ARTIFACTS}/{location.removeprefix(PROXIED).strip('/')}/"


def _artifact_keys(server, location: str) -> set[str]:
    """The objects under a proxied artifact location, relative to it, listed with boto3."""
    prefix = _key_prefix(location)
    pages = server.boto3_client().get_paginator("list_objects_v2")
    pages = pages.paginate(Bucket=server.bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}


def _check_artifacts_in_bucket(server, uri: str, run_id: str, model_uri: str, best_uri: str):
    """The run's artifacts and its logged model are objects in the bucket; the model's
    weights are the best checkpoint's, byte for byte."""
    from bratslab.tracking.mlflow_runs import client
    from bratslab.tracking.model_store import model_id_of

    c = client(uri)
    run_keys = _artifact_keys(server, c.get_run(run_id).info.artifact_uri)
    assert {"job.json", "learning_curve.png"} <= run_keys, run_keys
    location = c.get_logged_model(model_id_of(model_uri)).artifact_location
    keys = _artifact_keys(server, location)
    weights = [k for k in keys if k.endswith("model_dir/model.pt")]
    assert "MLmodel" in keys and len(weights) == 1, keys
    assert weights[0].removesuffix(".pt") + ".json" in keys
    s3 = server.boto3_client()
    logged = s3.get_object(Bucket=server.bucket, Key=_key_prefix(location) + weights[0])
    logged = logged["Body"].read()
    ckpt = best_uri.removeprefix(f"s3://{server.bucket}/") + "/model.pt"
    assert logged == s3.get_object(Bucket=server.bucket, Key=ckpt)["Body"].read()


def test_sigterm_then_rerun_resumes_from_checkpoints_in_s3(
    s3_server,  # noqa: F811
    tracking_server,
    tiny_store,
    tmp_path,
    monkeypatch,
):
    from bratslab.models.weights import load_model_dir
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.tracking.model_store import fetch_model_dir
    from bratslab.train.checkpoint import load_train_state
    from bratslab.train.run_storage import RUN_STATE

    home = tmp_path / "home"
    uri, server_dir = tracking_server
    env = _env(s3_server, home, uri)
    run_dir = home / "ray_results" / "smoke"
    epochs = f"training.epochs={EPOCHS}"
    _train_then_sigterm(tiny_store, env, tmp_path, run_dir / "train_log.txt", epochs)

    # Stopped: the run is KILLED with the reason, after its first epoch and before its last.
    run_id = json.loads((run_dir / RUN_STATE).read_text())["mlflow_run_id"]
    info = run_info(run_id, uri)  # the run is on the tracking server
    assert info["status"] == "KILLED"
    assert info["tags"]["bratslab.stop_reason"] == "SIGTERM"
    stopped_epochs = [s for s, _ in metric_history(run_id, "train/loss", uri)]
    assert stopped_epochs and stopped_epochs[0] == 0 and len(stopped_epochs) < EPOCHS
    # Ray's checkpoints are objects in the bucket; the run files are local, nothing else is.
    # (The worker is killed with the driver, so the checkpoint it was uploading may be partial:
    # never registered, it is not resumed from.)
    first = _checkpoints(s3_server)
    complete = [n for n, f in first.items() if {"model.pt", "model.json", "train_state.pt"} <= f]
    assert len(complete) >= 1 and len(complete) >= len(first) - 1
    assert (run_dir / "train_log.txt").is_file()
    assert not list(run_dir.glob("epoch*"))  # Ray wrote no checkpoint locally

    # The same command again resumes from the latest checkpoint in the bucket.
    _train(tiny_store, env, tmp_path, epochs)
    # Another job under the finished run's name, to be refused (asserted below): started now, it
    # only reads the run, and runs while the checks below read the bucket and the server.
    more = f"training.epochs={EPOCHS + 1}"
    refused = subprocess.Popen(
        _argv(tiny_store, more), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert json.loads((run_dir / RUN_STATE).read_text())["mlflow_run_id"] == run_id
    info = run_info(run_id, uri)
    assert info["status"] == "FINISHED"
    assert not (home / "mlflow.db").exists()  # nothing went to the embedded store
    # Every epoch logged exactly once; the rerun started after the last checkpoint, not at 0.
    assert [s for s, _ in metric_history(run_id, "train/loss", uri)] == list(range(EPOCHS))
    resumed = dict(metric_history(run_id, "resumed_from_epoch", uri))
    assert resumed[0] == 0.0
    assert resumed[EPOCHS - 1] == len(stopped_epochs) >= 1
    # The stopped run's checkpoints are all kept (checkpoints_to_keep = EPOCHS); the rerun wrote
    # one per epoch it trained. (A checkpoint the stopped run persisted after the controller's
    # last registration stays in the bucket unused: the rerun trains that epoch again.)
    second = _checkpoints(s3_server)
    rerun = set(second) - set(first)
    assert set(first) < set(second) and len(rerun) == EPOCHS - resumed[EPOCHS - 1]
    for name in rerun:
        assert {"model.pt", "model.json", "train_state.pt"} <= second[name]
    latest = max(rerun)  # epoch0004-<id>
    assert latest.startswith(f"epoch{EPOCHS:04d}-")
    copy = run_dir / "checkpoints" / latest
    state = load_train_state(copy)  # the local copy of the latest checkpoint
    assert state["epoch"] == EPOCHS and state["global_step"] == EPOCHS * STEPS
    best_uri = info["tags"]["bratslab.best_checkpoint"]
    prefix = f"s3://{s3_server.bucket}/{PREFIX}/smoke/"
    assert best_uri.startswith(prefix) and best_uri[len(prefix) :] in second
    # Only the best and the latest are kept as local copies.
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {
        latest,
        best_uri.rsplit("/", 1)[-1],
    }
    model_uri = info["tags"]["bratslab.model_uri"]
    _check_artifacts_in_bucket(s3_server, uri, run_id, model_uri, best_uri)
    # The tracking server kept no artifact on its own disk: only its database and log.
    kept = {p.name for p in server_dir.rglob("*") if p.is_file()}
    assert {n for n in kept if not n.startswith(("server.db", "server.log"))} == set()

    # A FINISHED run is a record: another job under its name is refused, the run untouched.
    out, err = refused.communicate(timeout=600)
    assert refused.returncode == 2, (out + err)[-4000:]
    assert "already FINISHED" in err
    assert f"training.epochs {EPOCHS} -> {EPOCHS + 1}" in err
    assert run_info(run_id, uri)["status"] == "FINISHED"

    # The logged model, downloaded through the server by a client without any S3 setting, is
    # the best checkpoint's weights.
    for key in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    model, _ = load_model_dir(fetch_model_dir(model_uri, uri=uri, cache=tmp_path / "cache"))
    with s3_server.filesystem().open_input_stream(best_uri[len("s3://") :] + "/model.pt") as f:
        remote = torch.load(io.BytesIO(f.read()), weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, remote[key]), key
