"""Sweeps: Ray Tune ``Tuner`` + ``OptunaSearch`` + ASHA, each trial a Ray Train run.

:func:`start_sweep` starts a sweep of a job; :func:`resume_sweep` continues one by name. Both
validate once, before anything is created or started, then share :func:`_run`.

Layout of a sweep folder (``$BRATSLAB_HOME/sweeps/<name>/``)::

    sweep.json        the resolved base job, the MLflow parent run id, where the Optuna study
                      lives (password hidden), the outcome when finished
    space.yaml        the space file as it was when the sweep started (a resume uses this copy)
    optuna.db         the Optuna study (SQLite; one writer: the Tune driver), unless
                      BRATSLAB_OPTUNA_STORAGE names a shared database (bratslab.tune.optuna_storage)
    tune/             Ray Tune's experiment state (trials, searcher and scheduler snapshots)
    train/            each trial's Ray Train run (checkpoints), named <sweep>-<trial id>
    trials/<id>.json  a completed trial's outcome, written atomically when its training ends
    results.csv       the results table (also an artifact of the parent run)

With ``BRATSLAB_RAY_STORAGE=s3://bucket/prefix``, ``tune/``, ``train/`` and ``trials/`` are in
the bucket under ``prefix/sweeps/<name>/`` instead, and the rest stays in the folder; the
manifest records that location (``ray_storage``) and a resume reads the experiment from there
(:mod:`bratslab.tune.experiment_storage` says what lives where).

Resume guarantee (``--resume NAME``): ``Tuner.restore`` brings back the trials, the searcher
(whose Optuna study, named after the sweep, lives in ``optuna.db`` or in the database the sweep
started with) and the scheduler from Tune's last experiment snapshot. Tune takes that snapshot
periodically, not at every trial completion, so a trial that finished just before an
interruption may come back as unfinished; its ``trials/<id>.json`` marker then makes the trial
function replay the recorded result instead of training again. A trial interrupted mid-training
restarts under the same Train run name and so continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab import atomic, console
from bratslab.config import ConfigError, validate
from bratslab.names import check_name
from bratslab.settings import Settings, get_settings
from bratslab.shutdown import STOP_REASON_TAG, Terminated, stop_on_signals
from bratslab.tune.config import SweepConfig
from bratslab.tune.experiment_storage import sweep_storage_uri
from bratslab.tune.optuna_storage import check_new_study, manifest_entry, storage_for_resume
from bratslab.tune.space import SearchSpace
from bratslab.tune.sweep_paths import TUNE_DIRNAME, SweepPaths, sweeps_root
from bratslab.tune.trial import TRIAL_ID_TAG, TrialContext
from bratslab.tune.trial_result import TrialResult
from bratslab.tune.trial_states import settle_trial_runs
from bratslab.tune.tuner import run_tuner

if TYPE_CHECKING:  # the spec is injected: tune/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)

__all__ = [
    "SweepOutcome",
    "SweepPaths",
    "TrialContext",
    "TrialResult",
    "resume_sweep",
    "start_sweep",
    "validate_sweep",
]


@dataclass
class SweepOutcome:
    """A finished (or interrupted) sweep."""

    name: str
    root: Path
    parent_run_id: str
    trials: list[TrialResult]
    interrupted: bool
    registration: Any = None  # selection.Registration when a winner was registered
    winner: TrialResult | None = None
    artifacts: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- entry points


def start_sweep(
    spec, *, job_source: str | None = None, settings: Settings | None = None
) -> SweepOutcome:
    """Start a new sweep of ``spec`` and run it end to end.

    Steps: validate the space against the job (every parameter and candidate value, before any
    folder, run or trial exists) → MLflow parent run → Tune (OptunaSearch + ASHA, one Ray Train
    run per trial) → results table and Optuna plots on the parent run → top-k TTA
    re-evaluation → register the winner and move the alias if it beats the champion.

    Args:
        spec: the validated ``JobSpec``, with a ``sweep`` section.
        job_source: path of the job file (a relative space path may be beside it).
    Raises:
        ConfigError: no sweep section, a sweep of that name exists, or a space that does not
            fit the job.
    """
    source = job_source or "job"
    if spec is None or spec.sweep is None:
        raise ConfigError(f"{source}: no `sweep` section")
    settings = _pin_stores(settings)
    name = spec.sweep.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    ray_storage = sweep_storage_uri(settings.ray_storage, name)  # ConfigError: a bad URI
    paths = SweepPaths(sweeps_root(settings) / name, settings.optuna_storage, ray_storage)
    if paths.manifest.is_file():
        raise ConfigError(
            f"sweep {name!r} exists in {paths.root}; continue it with --resume {name}"
        )
    if paths.experiment.remote and paths.experiment.has_experiment(TUNE_DIRNAME):
        # Another work folder's sweep of this name: Tune would mix both experiments.
        raise ConfigError(
            f"{source}: {ray_storage} already holds a Tune experiment; give the sweep another "
            f"sweep.name (resume an interrupted sweep with --resume {name} from its work folder)"
        )
    space_path = _resolve_space_path(spec.sweep.space, job_source)
    space = SearchSpace.from_file(space_path)
    validate_sweep(spec, space, source)
    if paths.optuna_storage:  # a shared database: the study name must be new there
        check_new_study(paths.optuna_storage, name, source)
    manifest = _create_sweep_folder(paths, name, spec, space_path)
    return _run(spec, space, paths, manifest, settings, restore=False)


def resume_sweep(
    name: str, *, job_type: type[JobSpec], settings: Settings | None = None
) -> SweepOutcome:
    """Continue the sweep ``name`` with the job and space stored in its folder; ``job_type``
    (the job spec class) validates the stored job.

    Completed trials are kept, unfinished ones continue from their latest checkpoint (see the
    module docstring), then the sweep finishes as :func:`start_sweep` does.

    Raises:
        ConfigError: no sweep of that name, the sweep already finished, or its stored space no
            longer fits its job.
    """
    settings = _pin_stores(settings)
    paths, manifest = _load_sweep(check_name(name, "sweep name"), settings)
    if manifest.get("finished"):
        raise ConfigError(
            f"sweep {name!r} already finished ({manifest['finished']}); "
            "start a new sweep to search again"
        )
    optuna_storage = storage_for_resume(manifest, settings, str(paths.manifest))
    paths = SweepPaths(paths.root, optuna_storage, _ray_storage_for_resume(manifest, settings))
    spec = validate(job_type, manifest["job"], str(paths.manifest))
    space = SearchSpace.from_file(paths.root / "space.yaml")
    space.source = manifest["space_file"]
    validate_sweep(spec, space, str(paths.manifest))
    # A sweep interrupted before Tune wrote any state starts its Tune experiment afresh.
    restore = paths.experiment.has_experiment(TUNE_DIRNAME)
    return _run(spec, space, paths, manifest, settings, restore=restore)


def validate_sweep(spec, space: SearchSpace, source: str) -> None:
    """Every check a sweep makes before it creates anything, run once per start or resume.

    Raises:
        ConfigError: a parameter (or the fixed values) does not fit the job, or ASHA's
            grace period exceeds its ``max_t``.
    """
    space.check_against(type(spec), spec.resolved(), source=source)
    sched = spec.sweep.scheduler
    max_t = sched.max_t or spec.training.epochs
    if sched.kind == "asha" and sched.grace_period > max_t:
        raise ConfigError(
            f"{source}: sweep.scheduler.grace_period ({sched.grace_period}) "
            f"exceeds max_t ({max_t}, default training.epochs)"
        )


# --------------------------------------------------------------------------- the sweep folder


def _pin_stores(settings: Settings | None) -> Settings:
    """Pin the stores for this process and the trial actors (``ensure_ray`` forwards these two
    variables): every MLflow client, fluent call and Ray worker then resolves the same store."""
    settings = settings or get_settings()
    os.environ.setdefault("BRATSLAB_HOME", str(settings.home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return settings


def _resolve_space_path(space: str, job_source: str | None) -> Path:
    """The space file as given (absolute or relative to the cwd), else relative to the job
    file's folder or its parent (``jobs/x.yaml`` → ``search_spaces/...`` of the same tree)."""
    p = Path(space).expanduser()
    if p.is_file() or p.is_absolute() or not job_source:
        return p
    job_dir = Path(job_source).parent
    for candidate in (job_dir / p, job_dir.parent / p):
        if candidate.is_file():
            return candidate
    return p


def _create_sweep_folder(paths: SweepPaths, name: str, spec, space_path: Path) -> dict:
    """The sweep folder with its copy of the space file; returns the (unwritten) manifest."""
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(paths.root / "space.yaml", space_path.read_text())
    return {
        "format": "bratslab-sweep/1",
        "name": name,
        "job": spec.resolved(),
        "space_file": str(space_path),
        "optuna": manifest_entry(paths.optuna_storage, name),
        "ray_storage": paths.ray_storage,  # None: tune/, train/, trials/ are in the folder
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent_run_id": None,
    }


def _ray_storage_for_resume(manifest: dict, settings: Settings) -> str | None:
    """Where the sweep's experiment is: the location it started with (recorded in the
    manifest, no secrets), whatever ``BRATSLAB_RAY_STORAGE`` says now; a difference is logged."""
    recorded = manifest.get("ray_storage")
    now = sweep_storage_uri(settings.ray_storage, manifest["name"])
    if now != recorded:
        log.warning(
            "sweep %s: its Tune experiment and checkpoints are in %s (where it started); "
            "BRATSLAB_RAY_STORAGE=%s is not used for it",
            manifest["name"],
            recorded or "its folder",
            settings.ray_storage or "(unset)",
        )
    return recorded


def _load_sweep(name: str, settings: Settings) -> tuple[SweepPaths, dict]:
    paths = SweepPaths(sweeps_root(settings) / name)
    if not paths.manifest.is_file():
        known = sorted(p.parent.name for p in sweeps_root(settings).glob("*/sweep.json"))
        raise ConfigError(
            f"no sweep named {name!r} under {sweeps_root(settings)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return paths, json.loads(paths.manifest.read_text())


# --------------------------------------------------------------------------- the run


def _run(
    spec, space: SearchSpace, paths: SweepPaths, manifest: dict, settings: Settings, *, restore
) -> SweepOutcome:
    """Parent run → Tune → (interrupted: close) or (done: follow-up, selection, registry).

    Args:
        restore: continue the Tune experiment in ``paths.tune`` (``Tuner.restore``).
    """
    from bratslab.tracking import mlflow_runs
    from bratslab.tune.dangling import close_dangling

    cfg: SweepConfig = spec.sweep
    name = manifest["name"]
    parent_run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params={"sweep": cfg.model_dump(mode="json"), "job": spec.name},
        tags={"bratslab.sweep": name, "bratslab.kind": "sweep", mlflow_runs.TAG_JOB: spec.name},
        resume_run_id=manifest.get("parent_run_id"),
    )
    manifest["parent_run_id"] = parent_run_id
    atomic.write_json(paths.manifest, manifest)

    _announce(spec, name, paths, settings)
    ctx = TrialContext(
        sweep_name=name,
        paths=paths,
        base_job=spec.resolved(),
        space=space,
        parent_run_id=parent_run_id,
        make_job=partial(validate, type(spec)),  # each trial's job, of the class given
    )
    # SIGTERM (jobs stop, preemption) ends the sweep like Ctrl-C does: the parent run is marked
    # KILLED with the reason, and `--resume NAME` continues. Tune keeps the main thread and its
    # own SIGINT handling (an interrupted Tuner returns normally; see below).
    try:
        with stop_on_signals((signal.SIGTERM,)):
            tuned = run_tuner(ctx, cfg, resume=restore, default_max_t=spec.training.epochs)
    except Terminated as stop:
        _stopped(parent_run_id, stop)
        raise
    except BaseException:
        mlflow_runs.end_run(parent_run_id, "FAILED")
        raise
    rows = tuned.trials
    _attach_run_ids(rows, paths, name, parent_run_id)
    interrupted = len(rows) < cfg.num_trials or any(
        not r.completed and r.status != "ERROR" for r in rows
    )
    outcome = SweepOutcome(name, paths.root, parent_run_id, rows, interrupted)
    if interrupted:
        write_and_log_results(outcome, paths)
        mlflow_runs.set_tags(parent_run_id, {"bratslab.interrupted": "true"})
        mlflow_runs.end_run(parent_run_id, "KILLED")
        log.warning("sweep %s interrupted; continue with --resume %s", name, name)
        return outcome
    # ASHA's stops end FINISHED (pruned), crashed trials FAILED (bratslab.tune.trial_states);
    # then, Tune having run to the end, any trial still RUNNING was left by a driver that died
    # (bratslab.tune.dangling); both before selection reads the study and the runs.
    settle_trial_runs(rows, lambda r: _job_epochs(r, ctx))
    close_dangling(paths.optuna_url, name, parent_run_id)
    # SIGTERM or Ctrl-C during the follow-up, TTA re-evaluation or registration stops the sweep
    # as during Tune: KILLED with the reason; re-evaluations already done are kept for --resume.
    try:
        with stop_on_signals():
            _finish(outcome, ctx, spec, manifest)
    except Terminated as stop:
        _stopped(parent_run_id, stop)
        raise
    return outcome


def _announce(spec, name: str, paths: SweepPaths, settings: Settings) -> None:
    """Start Ray and print the sweep's header: what runs where, how to resume, the log."""
    from bratslab.cluster import ensure_ray

    cfg: SweepConfig = spec.sweep
    log_file = console.attach(paths.root)
    ensure_ray(settings)
    console.say(
        f"sweep {name}: {cfg.num_trials} trials of {spec.name} ({spec.training.epochs} epochs "
        f"each, {cfg.max_concurrent} at a time, {cfg.scheduler.kind.upper()} on {cfg.metric}); "
        f"{console.ray_where()}"
    )
    console.say(
        f"folder {paths.root}; `bratslab sweep --resume {name}` continues it if interrupted"
        + (f"; log {log_file}" if log_file else "")
    )


def _stopped(parent_run_id: str, stop: Terminated) -> None:
    """A signal stopped the sweep: its parent run ends KILLED with the signal as the reason."""
    from bratslab.cluster import stop_driver
    from bratslab.tracking import mlflow_runs

    mlflow_runs.set_tags(
        parent_run_id, {STOP_REASON_TAG: stop.reason, "bratslab.interrupted": "true"}
    )
    mlflow_runs.end_run(parent_run_id, "KILLED")
    stop_driver()


def _finish(outcome: SweepOutcome, ctx: TrialContext, spec, manifest: dict) -> None:
    """After Tune is done: UpKern follow-up, selection and registry, results; the parent run
    ends FINISHED and the manifest records the outcome."""
    from bratslab.tracking import mlflow_runs

    cfg: SweepConfig = spec.sweep
    try:
        if cfg.upkern.enabled:
            from bratslab.tune.followup import run_upkern

            run_upkern(ctx, cfg, outcome)
        _select_and_register(outcome, spec, cfg, ctx.paths.experiment)
        write_and_log_results(outcome, ctx.paths)
    except Terminated:  # stopped, not failed: the caller marks the sweep KILLED
        raise
    except BaseException:
        write_and_log_results(outcome, ctx.paths)
        mlflow_runs.end_run(outcome.parent_run_id, "FAILED")
        raise
    mlflow_runs.set_tags(outcome.parent_run_id, {"bratslab.interrupted": "false"})
    mlflow_runs.end_run(outcome.parent_run_id, "FINISHED")
    reg = outcome.registration
    manifest["finished"] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "winner_trial": outcome.winner.trial_id if outcome.winner else None,
        "registered": f"{reg.name}/{reg.version}" if reg else None,
        "promoted": reg.promoted if reg else None,
    }
    atomic.write_json(ctx.paths.manifest, manifest)


def _attach_run_ids(
    rows: list[TrialResult], paths: SweepPaths, sweep_name: str, parent_run_id: str
) -> None:
    """Attach each trial's MLflow run id: from the train stage's run-state file where the
    driver can read it, else from the sweep's MLflow children (tag ``bratslab.trial_id``): with
    an ``s3://`` Ray storage a trial's run folder is on the node that ran it."""
    from bratslab.tracking import mlflow_runs
    from bratslab.train.run_storage import RUN_STATE

    by_trial: dict[str, str] | None = None
    for r in rows:
        state = paths.experiment.trial_run_dir(f"{sweep_name}-{r.trial_id}") / RUN_STATE
        if state.is_file():
            r.mlflow_run_id = json.loads(state.read_text())["mlflow_run_id"]
            continue
        if by_trial is None:  # one query, only when a file is missing
            by_trial = mlflow_runs.children_by_tag(parent_run_id, TRIAL_ID_TAG)
        r.mlflow_run_id = by_trial.get(r.trial_id)


def _job_epochs(r: TrialResult, ctx: TrialContext) -> int:
    """The epochs a trial's job asked for (base job + its sampled parameters)."""
    job = ctx.space.apply(ctx.base_job, ctx.space.decode(r.params))
    return int(job["training"]["epochs"])


def _select_and_register(outcome: SweepOutcome, spec, cfg: SweepConfig, storage) -> None:
    """Re-evaluate the top candidates with TTA, pick and register the winner.

    Args:
        storage: the sweep's :class:`~bratslab.tune.experiment_storage.ExperimentStorage`.
    """
    from bratslab.tracking import mlflow_runs
    from bratslab.tune import selection

    candidates = selection.rank_candidates(outcome.trials, cfg.mode, cfg.top_k)
    upkerned = [r for r in outcome.trials if r.trial_id.startswith("upkern-")]
    # The follow-up is re-evaluated even when its short finetune ranks below the top k.
    candidates += [r for r in upkerned if r not in candidates and r.best_checkpoint]
    if not candidates:
        log.warning("sweep %s: no trial produced a checkpoint; nothing to register", outcome.name)
        return
    store = str(spec.data.store_path())
    for c in candidates:  # checkpoints in a bucket are re-evaluated from local copies
        c.best_checkpoint = storage.localize(c.best_checkpoint, c.trial_id)
    for i, c in enumerate(candidates, 1):  # 40-60 s each on a CPU: one progress line each
        with console.step(f"TTA re-evaluation {i}/{len(candidates)}: trial {c.trial_id}"):
            selection.evaluate_candidates([c], store, spec.data.fold, cfg.tta)
    winner = selection.pick_winner(candidates, cfg.selection_metric, cfg.selection_mode)
    if winner is None:
        raise RuntimeError(
            f"sweep {outcome.name}: no candidate has a finite {cfg.selection_metric!r} "
            f"(got {sorted(candidates[0].tta)})"
        )
    outcome.winner = winner
    summary = {f"best/{k}": v for k, v in winner.tta.items()}
    mlflow_runs.log_metrics(outcome.parent_run_id, summary, 0)
    mlflow_runs.set_tags(outcome.parent_run_id, {"bratslab.winner_trial": winner.trial_id})
    if cfg.register_model:
        with console.captured():  # MLflow prints "Created version ..." (said in the summary)
            reg = selection.register_winner(
                winner,
                name=selection.registry_name(spec),
                sweep_name=outcome.name,
                metric=cfg.selection_metric,
                mode=cfg.selection_mode,
                alias=cfg.alias,
            )
        outcome.registration = reg
        mlflow_runs.set_tags(
            outcome.parent_run_id,
            {
                "bratslab.registered": f"{reg.name}/{reg.version}",
                "bratslab.promoted": str(reg.promoted).lower(),
            },
        )


def write_and_log_results(outcome: SweepOutcome, paths: SweepPaths) -> None:
    """results.csv + Optuna plots into the sweep folder and onto the parent run."""
    from bratslab.tracking import mlflow_runs
    from bratslab.tune import sweep_results

    files = [sweep_results.write_results_csv(paths.results_csv, outcome.trials)]
    files += sweep_results.optuna_plots(paths.optuna_url, outcome.name, paths.root)
    log_file = console.log_file()  # Ray's, MLflow's, Optuna's and the trials' output
    if log_file is not None and log_file.is_file():
        files.append(log_file)
    for f in files:
        mlflow_runs.log_artifact(outcome.parent_run_id, f)
    outcome.artifacts = files
