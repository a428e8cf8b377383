"""MLflow runs: creation, resumption, params/metrics/tags/artifacts, all by explicit run id.

Everything goes through an :class:`mlflow.MlflowClient` bound to an explicit tracking URI, never
the fluent global "active run": a Ray Tune trial, a Train controller callback and the driver may
all log from one process, and explicit ids keep them from stepping on each other. Where MLflow
builds a default client of its own (registering a model, ``models:/`` downloads, logging a
model), :func:`global_uris` points it at the same URI: every call lands in the settings' store.

Where logging happens (the design choice for clusters): training workers never talk to MLflow.
They report metrics through ``ray.train.report``; a ``ray.train.UserCallback`` running in the
Train *controller* logs them. Ray 2.60 pins the controller actor to the driver's node, so the
embedded SQLite store (a file on the driver's machine) works on a cluster too, and no worker
node ever opens a node-local SQLite file. A tracking server (``MLFLOW_TRACKING_URI=http://...``)
works unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bratslab.settings import get_settings
from bratslab.tracking.driver import driver_tag

log = logging.getLogger(__name__)

# Weights-only formats everywhere: refuse to unpickle anything MLflow hands us.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
TAG_JOB = "bratslab.job"
TAG_GIT = "bratslab.git_commit"
TAG_STORE = "bratslab.store_fingerprint"
TAG_PARENT = "mlflow.parentRunId"
# Why a run last stopped (bratslab.shutdown.STOP_REASON_TAG); cleared when it resumes.
RESUME_CLEARS_TAGS = {"bratslab.stop_reason", "bratslab.interrupted", "bratslab.failure"}


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI in force: ``uri`` or the settings' (embedded SQLite by default)."""
    return uri or get_settings().tracking_uri


def client(uri: str | None = None) -> MlflowClient:
    """A client for ``uri`` (default: settings), with the registry on the same store.

    The first client of a ``sqlite:`` store in this process creates or migrates its schema
    under a file lock (:func:`ensure_schema`)."""
    uri = tracking_uri(uri)
    ensure_schema(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_SCHEMA_READY: set[str] = set()
_SCHEMA_LOCK = threading.Lock()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI; None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine.url import make_url

    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None


def ensure_schema(uri: str) -> None:
    """Create or migrate the schema of an embedded SQLite store once, under a file lock.

    MLflow creates and migrates a database on first use with no lock of its own: processes
    opening a brand-new ``mlflow.db`` at the same moment (Ray workers, Tune trials) each ran
    the alembic migrations and most failed. Here one process at a time builds both stores
    (tracking and registry) while holding ``<db>.lock``; the others then find the schema
    current. Done once per URI per process; other stores are left alone.
    """
    if uri in _SCHEMA_READY:
        return
    with _SCHEMA_LOCK:
        if uri in _SCHEMA_READY:
            return
        db = sqlite_path(uri)
        if db is not None:
            from filelock import FileLock

            db.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(db) + ".lock", timeout=600):
                c = MlflowClient(tracking_uri=uri, registry_uri=uri)
                c.search_experiments(max_results=1)  # builds the tracking store: migrates
                c.search_registered_models(max_results=1)  # and the registry store
        _SCHEMA_READY.add(uri)


#: MLflow 3's UI opens an experiment in the view its kind names; bratslab's are model training
#: (runs, metrics, models), not GenAI (traces, evaluations).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def mark_training_experiments(uri: str | None = None) -> list[str]:
    """Tag every experiment that has no kind yet as model training (experiments created before
    bratslab set the kind); returns the ids of those tagged."""
    c = client(uri)
    marked = []
    for exp in c.search_experiments():
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            marked.append(exp.experiment_id)
    return marked


def latest_experiment(uri: str | None = None) -> str | None:
    """Id of the experiment whose newest run started last (None without runs)."""
    c = client(uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    if not ids:
        return None
    runs = c.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.experiment_id if runs else None


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """Experiment id for ``name``; new experiments of a database store (the embedded SQLite or
    PostgreSQL) keep their artifacts under ``$BRATSLAB_ARTIFACTS`` (default
    ``$BRATSLAB_HOME/mlartifacts``), not ``./mlruns`` of whatever the cwd is."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    settings = get_settings()
    location = None
    if not tracking_uri(uri).startswith(("http://", "https://", "databricks")):
        # A database store (SQLite, PostgreSQL) has no artifact root of its own: without one,
        # MLflow writes to ./mlruns of whichever process creates the experiment.
        location = (settings.artifacts / name).as_uri()
    try:
        return c.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
        )
    except mlflow.exceptions.MlflowException:  # created concurrently by another trial
        return c.get_experiment_by_name(name).experiment_id


# What MLflow accepts in a param name (mlflow.utils.validation): a key outside it (a shell
# pattern such as ``group_lr: {"enc*": ...}``) cannot become a name segment of its own.
_PARAM_NAME = re.compile(r"[\w\-. :/]+")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"training.optimizer.lr": "0.001", ...}`` (lists as their repr). A
    mapping with a key MLflow refuses in a param name (``enc*``) is one param, its JSON text:
    ``training.optimizer.group_lr = {"stem": 0.0001, "enc*": 0.0001}``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if (
            isinstance(value, Mapping)
            and value
            and not all(_PARAM_NAME.fullmatch(str(k)) for k in value)
        ):
            value = json.dumps(value, sort_keys=False, default=str)
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
    """Create a run (or reopen ``resume_run_id`` if it still exists) and return its id; the
    calling process is recorded as its driver (:mod:`bratslab.tracking.driver`).

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
            for key, value in driver_tag().items():  # this process drives it now
                c.set_tag(resume_run_id, key, value)
            for key in RESUME_CLEARS_TAGS & set(run.data.tags):  # stale once it runs again
                c.delete_tag(resume_run_id, key)
            log.info("resuming MLflow run %s", resume_run_id)
            return resume_run_id
    exp_id = get_or_create_experiment(experiment, uri)
    all_tags = {**driver_tag(), **(tags or {})}  # see bratslab.tracking.driver
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


def log_metrics(
    run_id: str,
    metrics: Mapping[str, Any],
    step: int,
    uri: str | None = None,
    *,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log the finite numeric entries of ``metrics`` at ``step`` (others are skipped), and
    ``tags`` if given, in one ``log_batch`` call (one store transaction)."""
    now = int(time.time() * 1000)
    items = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            items.append(Metric(k, float(v), now, int(step)))
    tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    if items or tag_items:
        client(uri).log_batch(run_id, metrics=items, tags=tag_items, synchronous=True)


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


def running_children(parent_run_id: str, uri: str | None = None) -> list[str]:
    """Run ids of the RUNNING runs whose ``mlflow.parentRunId`` is ``parent_run_id``."""
    runs = _children(parent_run_id, uri, "and attributes.status = 'RUNNING'")
    return [r.info.run_id for r in runs]


def children_by_tag(parent_run_id: str, key: str, uri: str | None = None) -> dict[str, str]:
    """``{tag value: run id}`` of the runs under ``parent_run_id`` that carry tag ``key`` (the
    newest run for a value that several carry)."""
    runs = _children(parent_run_id, uri, order_by=["attributes.start_time ASC"])
    return {r.data.tags[key]: r.info.run_id for r in runs if key in r.data.tags}


def _children(parent_run_id: str, uri: str | None, more: str = "", order_by=None) -> list:
    """The runs whose ``mlflow.parentRunId`` is ``parent_run_id`` (``more``: extra filter)."""
    c = client(uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' {more}".strip(),
        max_results=10_000,
        order_by=order_by,
    )


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


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def global_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking and registry URIs at ``uri`` for a moment.

    Needed wherever MLflow builds a default ``MlflowClient()`` internally, ignoring the URIs we
    pass: the fluent ``start_run``/``log_model``, ``register_model`` (its SQL registry store
    resolves a ``models:/<model_id>`` source with one), and ``models:/`` downloads (the model
    artifact repository looks models up with one). Checked against MLflow 3.17.2.

    Public API only. MLflow resolves the URI in force as: a value set with
    ``mlflow.set_tracking_uri`` / ``set_registry_uri``, else ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI``, else its own default (``./mlflow.db`` in the current folder). So
    the environment variables are set, and restored exactly afterwards; only when a value set in
    code outranks them is ``set_*_uri`` used too, and restored to that value. (Restoring with
    ``mlflow.set_tracking_uri(mlflow.get_tracking_uri())`` in general would pin MLflow's
    resolved default for good, and export it where :func:`bratslab.settings.get_settings` would
    take it for the user's choice.)
    """
    ensure_schema(uri)  # MLflow's own clients would otherwise race to migrate a new SQLite db
    saved_env = {k: os.environ.get(k) for k in _URI_VARIABLES}
    pinned = []
    try:
        os.environ.update(dict.fromkeys(_URI_VARIABLES, uri))
        for get, set_ in (
            (mlflow.get_tracking_uri, mlflow.set_tracking_uri),
            (mlflow.get_registry_uri, mlflow.set_registry_uri),
        ):
            previous = get()
            if previous != uri:  # a URI set in code outranks the environment
                pinned.append((set_, previous))
                set_(uri)
        yield
    finally:
        for set_, previous in pinned:
            set_(previous)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def download_artifacts(artifact_uri: str, dst_path: str | Path, uri: str | None = None) -> Path:
    """Download ``runs:/``, ``models:/`` or plain artifact URIs from the store at ``uri``
    (default: settings) into ``dst_path``; returns the local path MLflow reports.

    ``mlflow.artifacts.download_artifacts(tracking_uri=..., registry_uri=...)`` alone is not
    enough: it resolves ``models:/<model_id>``, ``models:/NAME/VERSION`` and
    ``models:/NAME@alias`` with MLflow's global URIs, so the download runs inside
    :func:`global_uris`.
    """
    uri = tracking_uri(uri)
    with global_uris(uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dst_path), tracking_uri=uri, registry_uri=uri
        )
    return Path(local)
