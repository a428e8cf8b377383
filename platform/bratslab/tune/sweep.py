"""Sweeps: Ray Tune ``Tuner`` + ``OptunaSearch`` + ASHA, each trial a Ray Train run.

Layout of a sweep folder (``$BRATSLAB_HOME/sweeps/<name>/``)::

    sweep.json        the resolved base job, the MLflow parent run id, the outcome when finished
    space.yaml        the space file as it was when the sweep started (a resume uses this copy)
    optuna.db         the Optuna study (SQLite RDB storage; one writer: the Tune driver)
    tune/             Ray Tune's experiment state (trials, searcher and scheduler snapshots)
    train/            each trial's Ray Train run (checkpoints), named <sweep>-<trial id>
    trials/<id>.json  a completed trial's outcome, written atomically when its training ends
    results.csv       the results table (also an artifact of the parent run)

Resume guarantee (``--resume NAME``): ``Tuner.restore`` brings back the trials, the searcher
(whose Optuna study lives in ``optuna.db``) and the scheduler from Tune's last experiment
snapshot. Tune takes that snapshot periodically, not at every trial completion, so a trial that
finished just before an interruption may come back as unfinished; its ``trials/<id>.json``
marker then makes the trial function replay the recorded result instead of training again. A
trial interrupted mid-training restarts under the same Train run name and so continues from its
latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bratslab import atomic
from bratslab.config import ConfigError
from bratslab.settings import Settings, get_settings
from bratslab.tune.config import SweepConfig
from bratslab.tune.harness import SweepPaths, TrialContext, run_tuner, sweeps_root
from bratslab.tune.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = ["SweepOutcome", "SweepPaths", "TrialContext", "run_sweep"]


@dataclass
class SweepOutcome:
    """A finished (or interrupted) sweep."""

    name: str
    root: Path
    parent_run_id: str
    trials: list[dict[str, Any]]
    interrupted: bool
    registration: Any = None  # selection.Registration when a winner was registered
    winner: dict[str, Any] | None = None
    artifacts: list[Path] = field(default_factory=list)


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


def _new_sweep(spec, job_source: str | None, settings: Settings) -> tuple[SweepPaths, dict]:
    cfg: SweepConfig = spec.sweep
    name = cfg.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = SweepPaths(sweeps_root(settings) / name)
    if paths.manifest.is_file():
        raise ConfigError(
            f"sweep {name!r} exists in {paths.root}; continue it with --resume {name}"
        )
    space_path = _resolve_space_path(cfg.space, job_source)
    from bratslab.jobs.spec import JobSpec

    # Validate the space file and every parameter against the job before anything is created.
    space = SearchSpace.from_file(space_path)
    space.check_against(JobSpec, spec.resolved(), source=job_source or "job")
    max_t = cfg.scheduler.max_t or spec.training.epochs
    if cfg.scheduler.kind == "asha" and cfg.scheduler.grace_period > max_t:
        raise ConfigError(
            f"{job_source or 'job'}: sweep.scheduler.grace_period ({cfg.scheduler.grace_period}) "
            f"exceeds max_t ({max_t}, default training.epochs)"
        )
    space_copy = paths.root / "space.yaml"
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(space_copy, space_path.read_text())
    manifest = {
        "format": "bratslab-sweep/1",
        "name": name,
        "job": spec.resolved(),
        "space_file": str(space_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent_run_id": None,
    }
    return paths, manifest


def _load_sweep(name: str, settings: Settings) -> tuple[SweepPaths, dict]:
    paths = SweepPaths(sweeps_root(settings) / name)
    if not paths.manifest.is_file():
        known = sorted(p.name for p in sweeps_root(settings).glob("*/sweep.json"))
        raise ConfigError(
            f"no sweep named {name!r} under {sweeps_root(settings)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return paths, json.loads(paths.manifest.read_text())


def _trial_run_ids(rows: list[dict[str, Any]], paths: SweepPaths, sweep_name: str) -> None:
    """Attach each trial's MLflow run id (from the train stage's run-state file)."""
    from bratslab.train.trainer import RUN_STATE

    for r in rows:
        state = paths.train / f"{sweep_name}-{r['trial_id']}" / RUN_STATE
        r["mlflow_run_id"] = (
            json.loads(state.read_text())["mlflow_run_id"] if state.is_file() else None
        )


def _mark_stopped_trials(rows: list[dict[str, Any]], ctx: TrialContext) -> None:
    """Label trials ASHA stopped before their last epoch; close runs of killed trials.

    A stopped trial's actor is killed mid-``fit``, so its MLflow run still says RUNNING once
    Tune is done: it becomes KILLED with the tag ``bratslab.stopped_early``. A completed trial
    whose run says FAILED (left so by an interruption before a resume) becomes FINISHED.
    """
    from bratslab.tracking import mlflow_runs

    for r in rows:
        if not r["completed"] or r["status"] == "ERROR":
            continue
        job = ctx.space.apply(ctx.base_job, ctx.space.decode(r["params"]))
        if r["iterations"] < int(job["training"]["epochs"]):
            r["status"] = "STOPPED_EARLY"
        run_id = r.get("mlflow_run_id")
        # RUNNING: the actor was killed mid-fit. FAILED: an interrupted sweep's trial whose fit
        # was torn down by Ctrl-C and which Tune then finished or stopped on resume. Either way
        # Tune's verdict (completed without error) is the truth the run should show.
        if run_id and mlflow_runs.run_info(run_id)["status"] in ("RUNNING", "FAILED"):
            if r["status"] == "STOPPED_EARLY":
                mlflow_runs.set_tags(run_id, {"bratslab.stopped_early": "true"})
                mlflow_runs.end_run(run_id, "KILLED")
            else:
                mlflow_runs.end_run(run_id, "FINISHED")


def run_sweep(
    spec=None,
    *,
    job_source: str | None = None,
    resume: str | None = None,
    settings: Settings | None = None,
) -> SweepOutcome:
    """Run a sweep end to end, or resume the sweep named ``resume``.

    Steps: validate the space against the job (every parameter and candidate value, before any
    trial starts) → MLflow parent run → Tune (OptunaSearch + ASHA, one Ray Train run per trial)
    → results table and Optuna plots on the parent run → top-k TTA re-evaluation → register the
    winner and move the alias if it beats the champion.

    Args:
        spec: the validated ``JobSpec`` (with a ``sweep`` section); ignored when resuming,
            which uses the job and space stored in the sweep folder.
        job_source: path of the job file (a relative space path may be beside it).
        resume: name of an existing sweep to continue.
    Raises:
        ConfigError: no sweep section, unknown sweep name, or a space that does not fit the job.
    """
    from bratslab.cluster import ensure_ray
    from bratslab.jobs.spec import JobSpec, job_from_dict
    from bratslab.tracking import mlflow_runs

    settings = settings or get_settings()
    # Pin the stores for this process and the trial actors (ensure_ray forwards these two
    # variables): every MLflow client, fluent call and Ray worker then resolves the same store.
    os.environ.setdefault("BRATSLAB_HOME", str(settings.home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    if resume:
        paths, manifest = _load_sweep(resume, settings)
        if manifest.get("finished"):
            raise ConfigError(
                f"sweep {resume!r} already finished ({manifest['finished']}); "
                "start a new sweep to search again"
            )
        spec = job_from_dict(manifest["job"], str(paths.manifest))
    else:
        if spec is None or spec.sweep is None:
            raise ConfigError(f"{job_source or 'job'}: no `sweep` section")
        paths, manifest = _new_sweep(spec, job_source, settings)
    cfg: SweepConfig = spec.sweep
    name = manifest["name"]
    space = SearchSpace.from_file(paths.root / "space.yaml")
    space.source = manifest["space_file"]
    base_job = spec.resolved()
    space.check_against(JobSpec, base_job, source=job_source or "job")

    parent_run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params={"sweep": cfg.model_dump(mode="json"), "job": spec.name},
        tags={"bratslab.sweep": name, "bratslab.kind": "sweep", mlflow_runs.TAG_JOB: spec.name},
        resume_run_id=manifest.get("parent_run_id"),
    )
    manifest["parent_run_id"] = parent_run_id
    atomic.write_json(paths.manifest, manifest)

    ensure_ray(settings)
    ctx = TrialContext(
        sweep_name=name,
        paths=paths,
        base_job=base_job,
        space=space,
        parent_run_id=parent_run_id,
        make_job=job_from_dict,
    )
    try:
        resuming = bool(resume) and paths.tune.exists()
        tuned = run_tuner(ctx, cfg, resume=resuming, default_max_t=spec.training.epochs)
    except BaseException:
        mlflow_runs.end_run(parent_run_id, "FAILED")
        raise
    rows = tuned.trials
    _trial_run_ids(rows, paths, name)
    interrupted = len(rows) < cfg.num_trials or any(
        not r["completed"] and r["status"] != "ERROR" for r in rows
    )
    outcome = SweepOutcome(name, paths.root, parent_run_id, rows, interrupted)
    if interrupted:
        write_and_log_results(outcome, paths)
        mlflow_runs.set_tags(parent_run_id, {"bratslab.interrupted": "true"})
        mlflow_runs.end_run(parent_run_id, "KILLED")
        log.warning("sweep %s interrupted; continue with --resume %s", name, name)
        return outcome
    _mark_stopped_trials(rows, ctx)
    try:
        if cfg.upkern.enabled:
            from bratslab.tune.followup import run_upkern

            run_upkern(ctx, cfg, outcome)
        _select_and_register(outcome, spec, cfg)
        write_and_log_results(outcome, paths)
    except BaseException:
        write_and_log_results(outcome, paths)
        mlflow_runs.end_run(parent_run_id, "FAILED")
        raise
    mlflow_runs.set_tags(parent_run_id, {"bratslab.interrupted": "false"})
    mlflow_runs.end_run(parent_run_id, "FINISHED")
    reg = outcome.registration
    manifest["finished"] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "winner_trial": outcome.winner["trial_id"] if outcome.winner else None,
        "registered": f"{reg.name}/{reg.version}" if reg else None,
        "promoted": reg.promoted if reg else None,
    }
    atomic.write_json(paths.manifest, manifest)
    return outcome


def _select_and_register(outcome: SweepOutcome, spec, cfg: SweepConfig) -> None:
    from bratslab.tracking import mlflow_runs
    from bratslab.tune import selection

    candidates = selection.rank_candidates(outcome.trials, cfg.mode, cfg.top_k)
    upkerned = [r for r in outcome.trials if str(r["trial_id"]).startswith("upkern-")]
    # The follow-up is re-evaluated even when its short finetune ranks below the top k.
    candidates += [r for r in upkerned if r not in candidates and r.get("best_checkpoint")]
    if not candidates:
        log.warning("sweep %s: no trial produced a checkpoint; nothing to register", outcome.name)
        return
    store = str(spec.data.store_path())
    selection.evaluate_candidates(candidates, store, spec.data.fold, cfg.tta)
    winner = selection.pick_winner(candidates, cfg.selection_metric, cfg.selection_mode)
    if winner is None:
        raise RuntimeError(
            f"sweep {outcome.name}: no candidate has a finite {cfg.selection_metric!r} "
            f"(got {sorted(candidates[0].get('tta', {}))})"
        )
    outcome.winner = winner
    summary = {f"best/{k}": v for k, v in winner["tta"].items()}
    mlflow_runs.log_metrics(outcome.parent_run_id, summary, 0)
    mlflow_runs.set_tags(outcome.parent_run_id, {"bratslab.winner_trial": winner["trial_id"]})
    if cfg.register_model:
        outcome.registration = selection.register_winner(
            winner,
            name=cfg.registry_name or selection.default_registry_name(store),
            sweep_name=outcome.name,
            metric=cfg.selection_metric,
            mode=cfg.selection_mode,
            alias=cfg.alias,
        )
        reg = outcome.registration
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
    from bratslab.tune import report

    files = [report.write_results_csv(paths.results_csv, outcome.trials)]
    files += report.optuna_plots(paths.optuna_url, outcome.name, paths.root)
    for f in files:
        mlflow_runs.log_artifact(outcome.parent_run_id, f)
    outcome.artifacts = files
