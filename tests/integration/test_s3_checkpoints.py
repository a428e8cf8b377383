"""Ray Train checkpoints in object storage (``BRATSLAB_RAY_STORAGE=s3://...``) against a real
S3-compatible server (SeaweedFS, s3_fixture).

``bratslab train`` runs as a subprocess with only the ``AWS_*`` variables pointing it at the
server: the checkpoints become objects in the bucket, the job's own files stay in the local
``$BRATSLAB_HOME/ray_results/<name>``, the MLflow run finishes with the best checkpoint's
``s3://`` URI as a tag and the best checkpoint logged as a model; rerunning the same name with
more epochs resumes from the checkpoint in the bucket.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from s3_fixture import s3_server  # noqa: F401  (the session's S3 server fixture)

pytestmark = pytest.mark.integration

BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
PREFIX = "ray_results"


def _env(server, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRATSLAB_"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    env.update(server.env(), BRATSLAB_HOME=str(home), BRATSLAB_RAY_CPUS="4")
    env["BRATSLAB_RAY_STORAGE"] = f"s3://{server.bucket}/{PREFIX}"
    return env


def _train(tiny_store: Path, env, cwd: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [str(BRATSLAB), "train", str(JOB), "--set", f"data.store={tiny_store}"]
    # One worker and one validation case: the two runs' cost is mostly Ray starting twice.
    sets = ("training.steps_per_epoch=2", "training.val_sw_batch_size=2", *sets)
    sets = ("scaling.num_workers=1", "data.max_val_cases=1", *sets)
    for s in ("training.checkpoints_to_keep=3", *sets):
        args += ["--set", s]
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


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


def test_checkpoints_in_s3_then_resume_from_them(s3_server, tiny_store, tmp_path):  # noqa: F811
    from bratslab.models.weights import load_model_dir
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.tracking.model_store import fetch_model_dir
    from bratslab.train.checkpoint import load_train_state

    home = tmp_path / "home"
    env = _env(s3_server, home)
    _train(tiny_store, env, tmp_path)

    # Ray's checkpoints are objects in the bucket; the run files are local, nothing else is.
    first = _checkpoints(s3_server)
    assert len(first) == 2  # one per epoch (checkpoints_to_keep keeps both)
    for files in first.values():
        assert {"model.pt", "model.json", "train_state.pt"} <= files
    run_dir = home / "ray_results" / "smoke"
    assert (run_dir / "train_log.txt").is_file()
    assert not list(run_dir.glob("epoch*"))  # Ray wrote no checkpoint locally
    run_id = json.loads((run_dir / "bratslab_run.json").read_text())["mlflow_run_id"]

    uri = f"sqlite:///{home / 'mlflow.db'}"
    info = run_info(run_id, uri)
    assert info["status"] == "FINISHED"
    best_uri = info["tags"]["bratslab.best_checkpoint"]
    prefix = f"s3://{s3_server.bucket}/{PREFIX}/smoke/"
    assert best_uri.startswith(prefix) and best_uri[len(prefix) :] in first
    # The logged model is the best checkpoint's weights (downloaded from the bucket first).
    model, _ = load_model_dir(fetch_model_dir(info["tags"]["bratslab.model_uri"], uri=uri))
    with s3_server.filesystem().open_input_stream(best_uri[len("s3://") :] + "/model.pt") as f:
        remote = torch.load(io.BytesIO(f.read()), weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, remote[key]), key

    # The same name with one more epoch resumes from the latest checkpoint in the bucket.
    _train(tiny_store, env, tmp_path, "training.epochs=3")
    assert [s for s, _ in metric_history(run_id, "train/loss", uri)] == [0, 1, 2]
    assert metric_history(run_id, "resumed_from_epoch", uri) == [(0, 0.0), (1, 0.0), (2, 2.0)]
    second = _checkpoints(s3_server)
    assert set(first) < set(second) and len(second) == 3
    assert run_info(run_id, uri)["status"] == "FINISHED"
    latest = max(second)  # epoch0003-<id>
    copy = run_dir / "checkpoints" / latest
    assert load_train_state(copy)["epoch"] == 3  # the local copy of the latest checkpoint
    # Only the best and the latest are kept as local copies.
    best = run_info(run_id, uri)["tags"]["bratslab.best_checkpoint"].rsplit("/", 1)[-1]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {latest, best}
