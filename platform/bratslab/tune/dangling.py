"""Close what a dead sweep driver left open: Optuna trials and MLflow trial runs still RUNNING.

Ray Tune snapshots its experiment (trials and searcher) periodically. A driver killed between a
trial's start and the next snapshot leaves that trial RUNNING in the Optuna study (the searcher
had asked the study for it) and, once it began training, a RUNNING MLflow child run. The
restored experiment does not know the trial, so nothing would ever finish either: TPE with
``constant_liar`` keeps treating it as pending, and ``runs list`` shows a run that never ends.

After a sweep's Tune experiment has run to the end no trial of it is running any more, so
every one still RUNNING belongs to a driver that is gone: Optuna marks it FAIL, MLflow KILLED
with ``bratslab.stop_reason=driver-lost``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bratslab.shutdown import STOP_REASON_TAG
from bratslab.tracking import mlflow_runs
from bratslab.tune.optuna_storage import open_storage

log = logging.getLogger(__name__)

DRIVER_LOST = "driver-lost"


@dataclass(frozen=True)
class Closed:
    """What :func:`close_dangling` closed: Optuna trial numbers and MLflow run ids."""

    optuna_trials: tuple[int, ...]
    mlflow_runs: tuple[str, ...]


def close_dangling(storage_url: str, study_name: str, parent_run_id: str) -> Closed:
    """Mark the study's RUNNING trials FAIL and the parent run's RUNNING children KILLED.

    Call only once the sweep's Tune experiment has finished (nothing of it runs any more).
    A study that does not exist (Tune never asked for a trial) closes nothing.
    """
    import optuna
    from optuna.trial import TrialState

    trials: list[int] = []
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:  # no such study
        study = None
    if study is not None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            trials.append(t.number)
    runs = mlflow_runs.running_children(parent_run_id)
    for run_id in runs:
        mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: DRIVER_LOST})
        mlflow_runs.end_run(run_id, "KILLED")
    if trials or runs:
        log.warning(
            "closed what a stopped driver left running: Optuna trials %s (FAIL), MLflow runs %s "
            "(KILLED)",
            trials,
            runs,
        )
    return Closed(tuple(trials), tuple(runs))
