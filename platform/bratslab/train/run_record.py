"""A job's MLflow run: opened (or reopened) with its params and tags, closed with its outcome.

Workers never talk to MLflow: per-epoch metrics come from :mod:`bratslab.train.mlflow_callback`
in the Train controller; this module records the rest from the driver.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab import console
from bratslab.atomic import write_json, write_text
from bratslab.shutdown import STOP_REASON_TAG
from bratslab.tracking import mlflow_runs, model_store
from bratslab.train.learning_curve import learning_curve
from bratslab.train.logged_metrics import best_summary_key
from bratslab.train.outcome import TrainOutcome, outcome_of
from bratslab.train.prepared_data import PreparedData
from bratslab.train.run_storage import RUN_STATE, RunStorage

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)


def open_run(spec: JobSpec, name: str, run_dir: Path, parent_run_id: str | None, data) -> str:
    """Start the job's MLflow run, or reopen the one ``run_dir``'s run-state file names (a
    rerun resumes it); record its id and params in that file. Returns the run id."""
    state_file = run_dir / RUN_STATE
    previous = json.loads(state_file.read_text())["mlflow_run_id"] if state_file.is_file() else None
    tags = {
        mlflow_runs.TAG_JOB: spec.name,
        mlflow_runs.TAG_GIT: mlflow_runs.git_commit(Path(__file__).parent),
        mlflow_runs.TAG_STORE: data.model_extra["store_fingerprint_hash"],
        "bratslab.arch": spec.model.arch,
        **spec.tracking.tags,
    }
    params = run_params(spec, data)
    run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params=params,
        tags=tags,
        parent_run_id=parent_run_id or spec.tracking.parent_run_id,
        resume_run_id=previous,
    )
    # The job this attempt runs (a resumed run keeps the params its first attempt logged):
    # what a later rerun of a FINISHED run is compared with (train/rerun.py).
    flat = mlflow_runs.flatten(params)
    write_json(state_file, {"mlflow_run_id": run_id, "job": spec.name, "params": flat})
    return run_id


def run_params(spec: JobSpec, data: PreparedData) -> dict[str, Any]:
    """The MLflow params of a run of ``spec`` (nested; flattened to dotted keys when logged)."""
    return {**spec.resolved(), "resolved": {"patch_size": data.patch_size}}


def close_failed(run_id: str, error: BaseException) -> None:
    """Close the MLflow run of a job that raised: FAILED, the error as its stop reason."""
    log_console_log(run_id)
    reason = f"error: {type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: reason})
    finally:
        mlflow_runs.end_run(run_id, "FAILED")


def log_console_log(run_id: str) -> None:
    """The command's log file (Ray's, MLflow's and the workers' output) on the MLflow run."""
    path = console.log_file()
    if path is not None and path.is_file():
        try:
            mlflow_runs.log_artifact(run_id, path)
        except Exception as e:  # the run's own outcome matters more than its log's copy
            log.warning("could not log %s to MLflow run %s: %s", path, run_id, e)


def close_stopped(name: str, run_id: str, stop) -> None:
    """Close the MLflow run of a job stopped by a signal: KILLED, with the signal as a tag."""
    mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: stop.reason})
    mlflow_runs.end_run(run_id, "KILLED")
    # The log file's record; the console's line is the CLI's ("stopped by SIGTERM: rerun ...").
    log.info(
        "job %s stopped by %s: MLflow run %s marked KILLED; rerun the same name to resume "
        "from its latest checkpoint",
        name,
        stop.reason,
        run_id,
    )


def record_run(spec: JobSpec, name: str, run_id: str, storage: RunStorage, result) -> TrainOutcome:
    """Log the job, the learning curve, the best scores and (optionally) the best checkpoint
    as a model to the MLflow run, then close it."""
    outcome = outcome_of(name, run_id, storage, result)
    best_dir, best_metrics = outcome.best_checkpoint, outcome.best_metrics
    with tempfile.TemporaryDirectory(prefix="bratslab-run-") as tmp:
        job_file = Path(tmp) / "job.json"
        write_text(job_file, json.dumps(spec.resolved(), indent=2, sort_keys=True))
        mlflow_runs.log_artifact(run_id, job_file)
        mlflow_runs.log_artifact(run_id, learning_curve(run_id, Path(tmp) / "learning_curve.png"))
    log_console_log(run_id)
    summary = {"best/" + k: v for k, v in best_metrics.items() if best_summary_key(k)}
    if summary:
        mlflow_runs.log_metrics(run_id, summary, int(best_metrics.get("epoch", 0)))
    if spec.tracking.log_model and best_dir is not None:
        outcome.model_uri = model_store.log_model_dir(best_dir, run_id=run_id)
        tags = {
            "bratslab.model_uri": outcome.model_uri,
            "bratslab.best_checkpoint": str(outcome.best_checkpoint_uri),
        }
        mlflow_runs.set_tags(run_id, tags)
    mlflow_runs.end_run(run_id, "FINISHED")
    return outcome
