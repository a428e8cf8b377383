"""The run of a sweep, once it is validated and its folder exists: the MLflow parent run → Tune
(:mod:`bratslab.tune.tuner`) → (interrupted: close) or (done: settle the trials, UpKern
follow-up, TTA re-evaluation of the top candidates, register the winner, results).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bratslab import atomic, console
from bratslab.cluster import ensure_ray, stop_driver
from bratslab.config import validate
from bratslab.settings import Settings
from bratslab.shutdown import STOP_REASON_TAG, Terminated, stop_on_signals
from bratslab.tracking import mlflow_runs
from bratslab.train.run_storage import RUN_STATE
from bratslab.tune import selection, sweep_results
from bratslab.tune.config import SweepConfig
from bratslab.tune.dangling import close_dangling
from bratslab.tune.followup import run_upkern
from bratslab.tune.space import SearchSpace
from bratslab.tune.sweep_paths import SweepPaths
from bratslab.tune.trial import TRIAL_ID_TAG, TrialContext
from bratslab.tune.trial_result import TrialResult
from bratslab.tune.trial_states import settle_trial_runs
from bratslab.tune.tuner import run_tuner

log = logging.getLogger(__name__)


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


def run_sweep(
    spec, space: SearchSpace, paths: SweepPaths, manifest: dict, settings: Settings, *, restore
) -> SweepOutcome:
    """Parent run → Tune → (interrupted: close) or (done: follow-up, selection, registry).

    Args:
        restore: continue the Tune experiment in ``paths.tune`` (``Tuner.restore``).
    """
    cfg: SweepConfig = spec.sweep
    name = manifest["name"]
    parent_run_id = _open_parent_run(spec, manifest, paths)
    _announce(spec, name, paths, settings)
    ctx = TrialContext(
        sweep_name=name,
        paths=paths,
        base_job=spec.resolved(),
        space=space,
        parent_run_id=parent_run_id,
        make_job=partial(validate, type(spec)),  # each trial's job, of the class given
    )
    rows = _tune(ctx, cfg, restore=restore, default_max_t=spec.training.epochs)
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


def _open_parent_run(spec, manifest: dict, paths: SweepPaths) -> str:
    """Start (or, on resume, reopen) the sweep's MLflow parent run; the manifest records it."""
    name = manifest["name"]
    parent_run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params={"sweep": spec.sweep.model_dump(mode="json"), "job": spec.name},
        tags={"bratslab.sweep": name, "bratslab.kind": "sweep", mlflow_runs.TAG_JOB: spec.name},
        resume_run_id=manifest.get("parent_run_id"),
    )
    manifest["parent_run_id"] = parent_run_id
    atomic.write_json(paths.manifest, manifest)
    return parent_run_id


def _tune(
    ctx: TrialContext, cfg: SweepConfig, *, restore: bool, default_max_t: int
) -> list[TrialResult]:
    """Run the Tune experiment; one row per trial. A failure ends the parent run FAILED.

    SIGTERM (jobs stop, preemption) ends the sweep like Ctrl-C does: the parent run is marked
    KILLED with the reason, and `--resume NAME` continues. Tune keeps the main thread and its
    own SIGINT handling (an interrupted Tuner returns normally; :func:`run_sweep` then finds
    the sweep interrupted).
    """
    try:
        with stop_on_signals((signal.SIGTERM,)):
            tuned = run_tuner(ctx, cfg, resume=restore, default_max_t=default_max_t)
    except Terminated as stop:
        _stopped(ctx.parent_run_id, stop)
        raise
    except BaseException:
        mlflow_runs.end_run(ctx.parent_run_id, "FAILED")
        raise
    return tuned.trials


def _announce(spec, name: str, paths: SweepPaths, settings: Settings) -> None:
    """Start Ray and print the sweep's header: what runs where, how to resume, the log."""
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
    mlflow_runs.set_tags(
        parent_run_id, {STOP_REASON_TAG: stop.reason, "bratslab.interrupted": "true"}
    )
    mlflow_runs.end_run(parent_run_id, "KILLED")
    stop_driver()


def _finish(outcome: SweepOutcome, ctx: TrialContext, spec, manifest: dict) -> None:
    """After Tune is done: UpKern follow-up, selection and registry, results; the parent run
    ends FINISHED and the manifest records the outcome."""
    cfg: SweepConfig = spec.sweep
    try:
        if cfg.upkern.enabled:
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
            lesionwise = spec.training.val_lesionwise
            selection.evaluate_candidates(
                [c], store, spec.data.fold, cfg.tta, lesionwise=lesionwise
            )
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
    files = [sweep_results.write_results_csv(paths.results_csv, outcome.trials)]
    files += sweep_results.optuna_plots(paths.optuna_url, outcome.name, paths.root)
    log_file = console.log_file()  # Ray's, MLflow's, Optuna's and the trials' output
    if log_file is not None and log_file.is_file():
        files.append(log_file)
    for f in files:
        mlflow_runs.log_artifact(outcome.parent_run_id, f)
    outcome.artifacts = files
