"""The Ray Tune run of a sweep: Tuner + OptunaSearch + ASHA over Ray Train trials.

:func:`run_tuner` runs (or, with ``Tuner.restore``, resumes) the Tune experiment; each trial is
:func:`bratslab.tune.trial.run_trial`. The sweep folder layout and the resume guarantee are
described in :mod:`bratslab.tune.sweep`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bratslab import console
from bratslab.config import ConfigError
from bratslab.tune.config import SweepConfig
from bratslab.tune.placement_groups import remove_orphaned_placement_groups
from bratslab.tune.search import make_scheduler, make_searcher
from bratslab.tune.sweep_paths import TUNE_DIRNAME, SweepPaths
from bratslab.tune.trial import CHECKPOINT_PATH_KEY, FRESH_KEY, TrialContext, run_trial
from bratslab.tune.trial_result import TrialResult

REAP_INTERVAL_S = 10.0  # how often the driver looks for placement groups of dead controllers


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in d.items()
        if (isinstance(v, (int, float, str, bool)) or v is None) and v == v  # drops NaN
    }


def _completion_recorder(paths: SweepPaths):
    """A Tune callback (driver side) writing ``trials/<id>.json`` the moment a trial ends.

    Written for trials that finish and for trials ASHA stops early: both are done as far as
    the sweep is concerned, and neither may train again on resume.
    """
    from ray.tune import Callback  # Ray: driver-side experiment hooks

    class CompletionRecorder(Callback):
        last_reap = 0.0

        def on_step_end(self, iteration, trials, **info):
            # A stopped trial's controller dies a moment after Tune reports the stop, so the
            # orphan check runs periodically rather than in on_trial_complete.
            if time.monotonic() - self.last_reap > REAP_INTERVAL_S:
                self.last_reap = time.monotonic()
                remove_orphaned_placement_groups()

        def on_trial_complete(self, iteration, trials, trial, **info):
            paths.experiment.write_marker(
                trial.trial_id,
                {
                    "trial_id": trial.trial_id,
                    "config": _jsonable(dict(trial.config)),
                    "last_result": _jsonable(dict(trial.last_result or {})),
                },
            )

    return CompletionRecorder()


@dataclass
class TunerOutcome:
    """What the Tune part of a sweep produced."""

    name: str
    paths: SweepPaths
    trials: list[TrialResult]  # one per trial, see `trial_rows`
    seconds: float


def run_tuner(
    ctx: TrialContext, cfg: SweepConfig, *, resume: bool, default_max_t: int
) -> TunerOutcome:
    """Run (or resume) the Tune experiment of a sweep and tabulate its trials.

    Args:
        ctx: the trial context (paths, base job, space, parent run).
        cfg: the sweep section.
        resume: continue the experiment in ``ctx.paths.tune`` (``Tuner.restore``).
        default_max_t: ASHA's ``max_t`` when the config leaves it unset (the job's epochs).
    """
    from ray import tune  # Ray: the Tune driver runs in this process

    start = time.monotonic()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    storage = ctx.paths.experiment
    if not storage.remote:
        ctx.paths.trials.mkdir(parents=True, exist_ok=True)
    # In a bucket, Ray is given pyarrow's path and the keyless filesystem (not the URI), as
    # Ray Train is by the train stage (see bratslab.tune.experiment_storage).
    fs, tune_path = storage.filesystem, storage.tune_path(TUNE_DIRNAME)
    if resume:
        if not tune.Tuner.can_restore(tune_path, storage_filesystem=fs):
            where = storage.checkpoint_uri(tune_path)
            raise ConfigError(f"{where}: no Tune experiment state to resume")
        # Finished trials are kept; unfinished ones continue (same trial ids); errored ones
        # start again from scratch.
        tuner = tune.Tuner.restore(
            tune_path,
            trainable=trainable,
            resume_unfinished=True,
            restart_errored=True,
            storage_filesystem=fs,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg, ctx.space, ctx.paths, ctx.sweep_name),
                scheduler=make_scheduler(cfg, default_max_t),
                num_samples=cfg.num_trials,
                max_concurrent_trials=cfg.max_concurrent,
                # metric/mode are given to the searcher and scheduler themselves (the
                # define-by-run OptunaSearch builds its study at construction).
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIRNAME,
                storage_path=storage.tune_storage_path,
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                callbacks=[_completion_recorder(ctx.paths)],
                # Tune's status tables: only with --verbose (the trials' epoch lines and the
                # sweep's summary say it in bratslab's words otherwise; bratslab.console).
                verbose=0 if console.quiet() else 1,
            ),
        )
    grid = tuner.fit()
    remove_orphaned_placement_groups()
    rows = trial_rows(grid, cfg, ctx.paths)
    return TunerOutcome(ctx.sweep_name, ctx.paths, rows, time.monotonic() - start)


def trial_rows(grid, cfg: SweepConfig, paths: SweepPaths) -> list[TrialResult]:
    """One :class:`TrialResult` per trial: id, status, params, best metric, epochs, checkpoint.

    The best checkpoint of a trial is the reported ``checkpoint_path`` with the best ``metric``
    among those still stored (the trainer keeps its top checkpoints by the same metric): a
    folder, or an ``s3://`` URI when the sweep's checkpoints are in a bucket.
    """
    storage = paths.experiment
    sign = 1.0 if cfg.mode == "max" else -1.0
    rows = []
    for res in grid:
        # Tune adds `trial_id` to every result; a trial that never reported has none.
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path or "?").name
        df = res.metrics_dataframe
        best_value, best_ckpt, iters = None, None, 0
        if df is not None and len(df):
            iters = int(df["training_iteration"].max()) if "training_iteration" in df else len(df)
            if cfg.metric in df:
                scored = df[df[cfg.metric].notna()]
                if len(scored):
                    best_value = float((scored[cfg.metric] * sign).max() * sign)
                if CHECKPOINT_PATH_KEY in df:
                    # Only epochs that validated: the metric of the others is carried over.
                    fresh = scored[scored[FRESH_KEY] == 1] if FRESH_KEY in scored else scored
                    with_ckpt = fresh[fresh[CHECKPOINT_PATH_KEY].notna()]
                    with_ckpt = with_ckpt[
                        with_ckpt[CHECKPOINT_PATH_KEY].map(
                            lambda p: storage.checkpoint_exists(str(p))
                        )
                    ]
                    if len(with_ckpt):
                        idx = (with_ckpt[cfg.metric] * sign).idxmax()
                        best_ckpt = storage.checkpoint_uri(
                            str(with_ckpt.loc[idx, CHECKPOINT_PATH_KEY])
                        )
        rows.append(
            TrialResult(
                trial_id=trial_id,
                status="ERROR" if res.error else "TERMINATED",
                completed=storage.has_marker(trial_id),
                iterations=iters,
                best_metric=best_value,
                best_checkpoint=best_ckpt,
                params=dict(res.config or {}),
                error=trial_error(res.error) if res.error else None,
            )
        )
    return rows


def trial_error(error: BaseException) -> str:
    """One line naming why a trial failed: what the trial function raised, not Ray's task
    wrapper around it (whose text is the remote traceback, with terminal colours)."""
    from bratslab.train.failures import describe

    for _ in range(3):  # ray.exceptions.RayTaskError keeps the exception raised as ``cause``
        cause = getattr(error, "cause", None)
        if not isinstance(cause, BaseException) or cause is error:
            break
        error = cause
    return describe(error)[:500]
