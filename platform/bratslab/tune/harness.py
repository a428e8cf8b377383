"""The Ray Tune harness of a sweep: Tuner + OptunaSearch + ASHA over Ray Train trials.

:func:`run_tuner` runs (or, with ``Tuner.restore``, resumes) the Tune experiment; each trial is
:func:`run_trial`, which trains one job through the train stage (its ``TorchTrainer`` reports
to Tune via ``TuneReportCallback``). The sweep folder layout and the resume guarantee are
described in :mod:`bratslab.tune.sweep`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bratslab import console
from bratslab.compat.ray_tune import TUNE_REPORT_CHECKPOINT_KEY, PlacementGroupRecord
from bratslab.config import ConfigError
from bratslab.settings import Settings, get_settings
from bratslab.tune.config import SweepConfig
from bratslab.tune.experiment_storage import ExperimentStorage
from bratslab.tune.space import SearchSpace
from bratslab.tune.storage import open_storage, sqlite_beside
from bratslab.tune.trial_result import TrialResult

TRIAL_ID_TAG = "bratslab.trial_id"  # on every trial's MLflow run: which trial it is

log = logging.getLogger(__name__)

TUNE_DIRNAME = "tune"
CHECKPOINT_PATH_KEY = TUNE_REPORT_CHECKPOINT_KEY  # key TuneReportCallback adds to each result
FRESH_KEY = "val/fresh"  # 1 when the train loop validated in this epoch
REAP_INTERVAL_S = 10.0  # how often the driver looks for placement groups of dead controllers


@dataclass(frozen=True)
class SweepPaths:
    """Where one sweep keeps its state.

    Attributes:
        root: the sweep folder.
        optuna_storage: SQLAlchemy URL of the Optuna study storage (``BRATSLAB_OPTUNA_STORAGE``,
            see :mod:`bratslab.tune.storage`); None keeps the study in ``optuna.db`` in ``root``.
        ray_storage: ``s3://bucket/prefix/sweeps/<name>`` when the Tune experiment, trial
            checkpoints and markers live in a bucket (:mod:`bratslab.tune.experiment_storage`);
            None keeps them in ``root``.
    """

    root: Path
    optuna_storage: str | None = None
    ray_storage: str | None = None

    @property
    def experiment(self) -> ExperimentStorage:
        """Where the Tune experiment, the trials' checkpoints and their markers live."""
        return ExperimentStorage(self.root, self.ray_storage)

    @property
    def manifest(self) -> Path:
        return self.root / "sweep.json"

    @property
    def tune(self) -> Path:
        return self.root / TUNE_DIRNAME

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def optuna_url(self) -> str:
        """The storage URL of the sweep's Optuna study (its study name is the sweep's)."""
        return self.optuna_storage or sqlite_beside(self.root)

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    def marker(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.json"

    def attempts(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.attempts.jsonl"


def sweeps_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).home / "sweeps"


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
        from bratslab.compat.ray_tune import tune_auto_result_keys

        # Ray: give Tune/ASHA/Optuna the recorded outcome (minus the keys Tune fills itself).
        skip = {*tune_auto_result_keys(), "trial_id", "experiment_id", "done", "config"}
        tune.report({k: v for k, v in done["last_result"].items() if k not in skip})
        return
    job = ctx.trial_job(trial_id, config)
    # Audit trail: one line per training start.
    storage.append_attempt(trial_id, {"time": time.time(), "job": job.name})
    from bratslab.train.trainer import run_training

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


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in d.items()
        if (isinstance(v, (int, float, str, bool)) or v is None) and v == v  # drops NaN
    }


LIVE_PG_STATES = frozenset({"CREATED", "PENDING", "RESCHEDULING"})


def orphaned_placement_groups(records: list[PlacementGroupRecord]) -> list[PlacementGroupRecord]:
    """The live, non-detached placement groups whose creating actor is dead.

    Groups created by the driver (Tune's trial groups), by live actors, or detached are left out.
    """
    return [
        r
        for r in records
        if r.state in LIVE_PG_STATES
        and r.created_by_actor
        and r.creator_actor_dead
        and not r.is_detached
    ]


def remove_orphaned_placement_groups() -> int:
    """Remove placement groups whose creating actor is dead; returns how many.

    Why: ASHA stops a trial by ending its Tune actor, which takes the Ray Train controller (an
    actor it owns) down with it. The controller created the worker group's placement group, and
    Ray keeps such a group until the *job* ends. Ray Train's own ``PlacementGroupCleaner``
    removes it only when it can query the State API (the dashboard); without it every stopped
    trial keeps its workers' CPUs/GPUs reserved and a long sweep starves.

    Reads the GCS placement-group table through
    :func:`bratslab.compat.ray_tune.placement_group_records` (Ray's public
    ``placement_group_table()`` drops the creator fields); on any API mismatch it logs and does
    nothing.
    """
    import ray  # Ray: placement-group bookkeeping on the driver
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    from bratslab.compat.ray_tune import placement_group_records

    try:
        orphans = orphaned_placement_groups(placement_group_records())
        for r in orphans:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(r.placement_group_id)))
    except Exception as e:  # private API: never let bookkeeping break a sweep
        log.warning("could not check for orphaned placement groups: %s", e)
        return 0
    if orphans:
        log.info("removed %d placement group(s) left by stopped trials", len(orphans))
    return len(orphans)


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

    from bratslab.compat.ray_tune import asha_max_t, asha_time_attr, asha_uncount_stop

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
                error=str(res.error)[:500] if res.error else None,
            )
        )
    return rows
