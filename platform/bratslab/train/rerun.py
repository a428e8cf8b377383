"""Rerunning a name whose MLflow run FINISHED: a finished run is a record, never reopened.

``run_training`` reopens the MLflow run of a name it ran before, so that a KILLED or FAILED run
resumes from its latest checkpoint, as Ray Train resumes a run folder. A FINISHED run is the
record of a completed job: its metrics, its model, maybe a registered version. Reopening it let a
later rerun flip it to RUNNING, then FAILED or KILLED (e.g. more epochs from a checkpoint that no
longer loads). So a rerun of a finished name

- with the same job (every parameter of the job that finished it equal) trains nothing and
  returns the recorded outcome, read from the run folder (``ray.train.Result.from_path``);
  MLflow is not written;
- with another job (more epochs, another learning rate, ...) is refused before anything starts:
  a ``ConfigError`` naming what differs; train it under a new name instead, starting from the
  finished run's model with ``--set model.init_from=<its model URI>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bratslab.config import ConfigError
from bratslab.tracking import mlflow_runs
from bratslab.train.outcome import outcome_of

log = logging.getLogger(__name__)

MODEL_URI_TAG = "bratslab.model_uri"
SHOWN_CHANGES = 3  # differing parameters named in the refusal


def finished_run(state_file: Path, params: dict[str, Any], name: str) -> str | None:
    """The MLflow run id of ``name`` if its run is FINISHED with the same parameters, else None
    (no run yet, or one to resume).

    Raises:
        ConfigError: the run is FINISHED and ``params`` differ from the ones it logged.
    """
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    run_id = state["mlflow_run_id"]
    try:
        info = mlflow_runs.run_info(run_id)
    except Exception:  # gone from this tracking store: a new run is started as before
        return None
    if info["status"] != "FINISHED":
        return None
    # The job of the attempt that finished it (the run folder records it), else the params the
    # run's first attempt logged (MLflow keeps those when a run is resumed with another job).
    logged, now = state.get("params") or info["params"], mlflow_runs.flatten(params)
    changed = sorted(k for k in now.keys() & logged.keys() if now[k] != logged[k])
    if changed:
        shown = ", ".join(f"{k} {logged[k]} -> {now[k]}" for k in changed[:SHOWN_CHANGES])
        more = f" and {len(changed) - SHOWN_CHANGES} more" if len(changed) > SHOWN_CHANGES else ""
        model = info["tags"].get(MODEL_URI_TAG, "<its model URI>")
        raise ConfigError(
            f"run {name!r} already FINISHED (MLflow run {run_id}) with another job ({shown}"
            f"{more}); a finished run is kept as it is: train under a new --name, e.g. with "
            f"--set model.init_from={model}"
        )
    return run_id


def recorded_outcome(name: str, run_id: str, storage) -> Any:
    """The outcome of the finished run ``name`` as recorded (a
    :class:`~bratslab.train.outcome.TrainOutcome`), read from its Ray Train run folder on
    ``storage`` (a :class:`~bratslab.train.run_storage.RunStorage`) and its MLflow tags."""
    import ray.train  # Ray: reads the run folder's checkpoint snapshot; no cluster needed

    folder = f"{storage.ray_path.rstrip('/')}/{name}"
    result = ray.train.Result.from_path(folder, storage_filesystem=storage.filesystem)
    outcome = outcome_of(name, run_id, storage, result)
    outcome.model_uri = mlflow_runs.run_info(run_id)["tags"].get(MODEL_URI_TAG)
    log.warning(
        "run %s already FINISHED (MLflow run %s): nothing to train; its recorded outcome is "
        "returned (train under a new name to train again)",
        name,
        run_id,
    )
    return outcome
