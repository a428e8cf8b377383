"""The sweep's searcher (Optuna's TPE or random sampling, study persisted) and scheduler (ASHA)."""

from __future__ import annotations

import logging
import warnings

from bratslab import console
from bratslab.compat.ray_tune import asha_max_t, asha_time_attr, asha_uncount_stop
from bratslab.tune.config import SweepConfig
from bratslab.tune.optuna_storage import open_storage
from bratslab.tune.space import SearchSpace
from bratslab.tune.sweep_paths import SweepPaths

log = logging.getLogger(__name__)


def make_searcher(cfg: SweepConfig, space: SearchSpace, paths: SweepPaths, study_name: str):
    """``OptunaSearch`` over the define-by-run space, its study persisted in
    ``paths.optuna_url`` (``optuna.db`` in the sweep folder unless ``BRATSLAB_OPTUNA_STORAGE``
    names a shared database)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    console.adopt_library_loggers()  # Optuna's "A new study created": into the log file

    if cfg.search.algorithm == "tpe":
        # multivariate+group: TPE models parameters jointly within each conditional branch.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=cfg.search.seed,
            n_startup_trials=cfg.search.n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=cfg.search.constant_liar,
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.search.seed)
    storage = open_storage(paths.optuna_url)
    if cfg.search.initial_points:
        # Enqueued in the persisted study before Ray's OptunaSearch opens it; skip_if_exists
        # keeps a resumed sweep from queueing them a second time.
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            study_name=study_name,
            load_if_exists=True,
            direction="maximize" if cfg.mode == "max" else "minimize",
        )
        for point in cfg.search.initial_points:
            study.enqueue_trial(space.encode_point(point), skip_if_exists=True)

    class ResumableOptunaSearch(OptunaSearch):
        """Lets a restored trial replay a result the study already holds.

        Tune snapshots its searcher periodically; when the driver dies hard (SIGKILL,
        preemption) after a trial was told to the study but before the next snapshot, the
        restored searcher still maps that trial to its (now finished) Optuna trial, and the
        trial's replayed result (``trials/<id>.json``, see :func:`run_trial`) would make Optuna
        raise ``UpdateFinishedTrialError`` and fail the resumed sweep. The study already holds
        that outcome, so the result is dropped (``on_trial_complete``'s ``tell`` is already
        guarded by Ray: a warning).
        """

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                log.info("trial %s is already finished in the Optuna study", trial_id)

    return ResumableOptunaSearch(
        space=space.suggest,
        metric=cfg.metric,
        mode=cfg.mode,
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )


def make_scheduler(cfg: SweepConfig, default_max_t: int):
    """ASHA (or FIFO) on ``cfg.scheduler.time_attr``.

    ASHA's rungs are ``grace_period * reduction_factor**k``; when one falls on ``max_t`` (the last
    epoch), stock ASHA would kill a below-cutoff trial right after its final report, before its
    training run has ended its MLflow run and logged its artifacts. Nothing is saved by stopping
    there, so this ASHA records the result for the rung and lets the trial finish.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    s = cfg.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    # grace_period <= max_t was checked before the sweep started (sweep.validate_sweep).
    max_t = s.max_t or default_max_t

    class FinishingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and result.get(asha_time_attr(self), 0) >= (
                asha_max_t(self)
            ):
                asha_uncount_stop(self)
                return TrialScheduler.CONTINUE
            return action

    return FinishingASHA(
        time_attr=s.time_attr,
        metric=cfg.metric,
        mode=cfg.mode,
        max_t=max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        # A trial that reaches max_t finishes its own epochs (max_t only places the rungs).
        stop_last_trials=False,
    )
