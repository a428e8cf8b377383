"""MLflow runs: creation, resumption, params/metrics/tags/artifacts, all by explicit run id.

Everything goes through an :class:`mlflow.MlflowClient` bound to an explicit tracking URI, never
the fluent global "active run": a Ray Tune trial, a Train controller callback and the driver may
all log from one process, and explicit ids keep them from stepping on each other.

Where logging happens (the design choice for clusters): training workers never talk to MLflow.
They report metrics through ``ray.train.report``; a ``ray.train.UserCallback`` running in the
Train *controller* logs them. Ray 2.60 pins the controller actor to the driver's node, so the
embedded SQLite store (a file on the driver's machine) works on a cluster too, and no worker
node ever opens a node-local SQLite file. A tracking server (``MLFLOW_TRACKING_URI=http://...``)
works unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bratslab.settings import get_settings

log = logging.getLogger(__name__)

# Weights-only formats everywhere: refuse to unpickle anything MLflow hands us.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
TAG_JOB = "bratslab.job"
TAG_GIT = "bratslab.git_commit"
TAG_STORE = "bratslab.store_fingerprint"
TAG_PARENT = "mlflow.parentRunId"


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI in force: ``uri`` or the settings' (embedded SQLite by default)."""
    return uri or get_settings().tracking_uri


def client(uri: str | None = None) -> MlflowClient:
    """A client for ``uri`` (default: settings), with the registry on the same store."""
    uri = tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """Experiment id for ``name``; new experiments of the embedded store keep their artifacts
    under ``$BRATSLAB_HOME/mlartifacts`` (not ``./mlruns`` of whatever the cwd is)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    settings = get_settings()
    location = None
    if tracking_uri(uri).startswith("sqlite:"):
        location = (settings.artifacts / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another trial
        return c.get_experiment_by_name(name).experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"training.optimizer.lr": "0.001", ...}`` (lists as their repr)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            text = str(value)
            if len(text) > MAX_PARAM_CHARS:
                text = text[: MAX_PARAM_CHARS - 3] + "..."
            out[name] = text
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (``+dirty`` when the tree has changes), or ``"unknown"``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def start_run(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    uri: str | None = None,
) -> str:
    """Create a run (or reopen ``resume_run_id`` if it still exists) and return its id.

    ``params`` is a nested config, flattened to dotted keys. On resume the params already
    logged are kept (MLflow forbids changing a param), and the run is set back to RUNNING.
    """
    c = client(uri)
    if resume_run_id:
        try:
            run = c.get_run(resume_run_id)
        except mlflow.exceptions.MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage != "deleted":
            c.update_run(resume_run_id, status="RUNNING")
            log.info("resuming MLflow run %s", resume_run_id)
            return resume_run_id
    exp_id = get_or_create_experiment(experiment, uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    if params:
        flat = flatten(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            c.log_batch(run_id, params=items[i : i + 100], synchronous=True)
    return run_id


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int, uri: str | None = None) -> None:
    """Log the finite numeric entries of ``metrics`` at ``step`` (others are skipped)."""
    now = int(time.time() * 1000)
    items = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            items.append(Metric(k, float(v), now, int(step)))
    if items:
        client(uri).log_batch(run_id, metrics=items, synchronous=True)


def set_tags(run_id: str, tags: Mapping[str, str], uri: str | None = None) -> None:
    client(uri).log_batch(
        run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True
    )


def log_artifact(
    run_id: str, path: str | Path, artifact_path: str | None = None, uri: str | None = None
) -> None:
    """Upload a file (or a folder's contents) as run artifacts."""
    c = client(uri)
    path = Path(path)
    if path.is_dir():
        c.log_artifacts(run_id, str(path), artifact_path)
    else:
        c.log_artifact(run_id, str(path), artifact_path)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    client(uri).set_terminated(run_id, status=status)


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, ordered by step then time."""
    hist = client(uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]


def run_info(run_id: str, uri: str | None = None) -> dict[str, Any]:
    """Status, params, tags and latest metrics of a run, as plain dicts."""
    run = client(uri).get_run(run_id)
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
    }


def metric_keys(run_id: str, uri: str | None = None) -> Iterable[str]:
    return client(uri).get_run(run_id).data.metrics.keys()


@contextmanager
def global_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking and registry URIs at ``uri`` for a moment.

    Restores the globals *and* the ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` environment
    variables exactly: ``mlflow.set_tracking_uri(previous)`` would export MLflow's resolved
    default (``sqlite:///mlflow.db`` in the cwd) into the environment, where
    :func:`bratslab.settings.get_settings` would then pick it up as if the user had set it.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
