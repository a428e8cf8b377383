"""One trial of a sweep: its job (base job + sampled parameters) and the Tune trainable.

:func:`run_trial` trains one job through the train stage (its ``TorchTrainer`` reports to Tune
via ``TuneReportCallback``); :class:`TrialContext` is what every trial actor receives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bratslab.compat.ray_tune import TUNE_REPORT_CHECKPOINT_KEY, tune_auto_result_keys
from bratslab.train.trainer import run_training
from bratslab.tune.space import SearchSpace
from bratslab.tune.sweep_paths import SweepPaths

log = logging.getLogger(__name__)


TRIAL_ID_TAG = "bratslab.trial_id"  # on every trial's MLflow run: which trial it is
CHECKPOINT_PATH_KEY = TUNE_REPORT_CHECKPOINT_KEY  # key TuneReportCallback adds to each result
FRESH_KEY = "val/fresh"  # 1 when the train loop validated in this epoch


@dataclass
class TrialContext:
    """What every trial needs, shipped to the trial actors with ``tune.with_parameters``.

    Attributes:
        make_job: validates a job dict into a ``JobSpec`` (``validate`` with the spec's class).
    """

    sweep_name: str
    paths: SweepPaths
    base_job: dict[str, Any]
    space: SearchSpace
    parent_run_id: str | None
    make_job: Callable[[dict[str, Any], str], Any]
    extra_tags: dict[str, str] = field(default_factory=dict)

    def trial_job(self, trial_id: str, config: dict[str, Any]) -> Any:
        """The validated job of one trial: base job + fixed values + sampled parameters."""
        params = self.space.decode(config)
        data = self.space.apply(self.base_job, params)
        data.pop("sweep", None)
        data["name"] = f"{self.sweep_name}-{trial_id}"
        tracking = data.setdefault("tracking", {})
        tracking["parent_run_id"] = self.parent_run_id
        tracking["tags"] = {
            **(tracking.get("tags") or {}),
            **self.extra_tags,
            "bratslab.sweep": self.sweep_name,
            TRIAL_ID_TAG: trial_id,
        }
        # Only the sweep's winner becomes an MLflow model (after TTA re-evaluation).
        tracking["log_model"] = False
        return self.make_job(data, f"sweep {self.sweep_name} trial {trial_id}")


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: one Ray Train run whose reports flow to Tune.

    Runs inside a Tune trial actor. ``TuneReportCallback`` forwards each report of the Train
    run's rank-0 worker (metrics + ``checkpoint_path``) to Tune, where ASHA and Optuna see it.
    """
    from ray import tune  # Ray: trial context and reporting
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    storage = ctx.paths.experiment  # the sweep folder or the bucket (markers, checkpoints)
    done = storage.read_marker(trial_id)
    if done is not None:
        log.warning("trial %s already completed; replaying its recorded result", trial_id)

        # Ray: give Tune/ASHA/Optuna the recorded outcome (minus the keys Tune fills itself).
        skip = {*tune_auto_result_keys(), "trial_id", "experiment_id", "done", "config"}
        tune.report({k: v for k, v in done["last_result"].items() if k not in skip})
        return
    job = ctx.trial_job(trial_id, config)
    # Audit trail: one line per training start.
    storage.append_attempt(trial_id, {"time": time.time(), "job": job.name})

    # Every epoch's checkpoint folder gets a new name (train.loop.report_epoch).
    existing = storage.checkpoint_names(job.name)
    # run_training builds the TorchTrainer (build_trainer), opens the trial's MLflow run nested
    # under the sweep's parent, and reopens both when a restarted trial reuses its name.
    outcome = run_training(
        job,
        name=job.name,
        parent_run_id=ctx.parent_run_id,
        callbacks=[TuneReportCallback()],  # Ray: Train → Tune bridge (metrics + checkpoint path)
        storage_path=storage.train_storage,
    )
    latest = outcome.latest_checkpoint
    if latest is not None and latest.name in existing:
        # The Train run had registered its last epoch before the sweep's driver died (e.g.
        # SIGKILL) but Tune never recorded the trial as done: this attempt resumed at the end,
        # trained and reported nothing. Tune still needs the trial's final result.
        log.warning("trial %s had finished training; reporting its last result", trial_id)
        path = storage.checkpoint_path(job.name, latest.name)  # as Ray Train reports it
        tune.report({**outcome.metrics, CHECKPOINT_PATH_KEY: path})  # Ray
