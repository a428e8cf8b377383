"""``bratslab train JOB.yaml [--set key.sub=value ...] [--name NAME] [--folds all|0,2,4]``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from bratslab.app.cli import examples

MEAN_DICE = "val/dice_mean"  # printed first, then the Dice of each region of the profile


def train(
    job: Path = typer.Argument(..., help="Job spec (jobs/*.yaml).", exists=False),
    set_: list[str] = typer.Option(
        [], "--set", help="Dotted override, e.g. --set training.epochs=5 (repeatable)."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Run name (default: the job's `name`): letters, digits, _ . - (it names a folder); "
        "an existing name resumes.",
    ),
    folds: str | None = typer.Option(
        None,
        "--folds",
        help="Cross-validation: train these folds of the store ('all' or e.g. 0,2,4), one run "
        "NAME-fold<k> each, under a parent MLflow run NAME that logs cv/fold<k>/... and "
        "cv/mean/... metrics. A rerun resumes unfinished folds and keeps finished ones.",
    ),
    max_parallel: int = typer.Option(
        1,
        "--max-parallel",
        min=1,
        help="With --folds: folds trained at once on the Ray cluster (default 1, one after "
        "another: one fold's workers already fill a small machine).",
    ),
) -> None:
    """Train a model with Ray Train as described by JOB; rerunning a name resumes it."""
    from rich.console import Console

    from bratslab.config import ConfigError
    from bratslab.jobs.spec import load_job
    from bratslab.names import check_name

    # The cheap checks first: a bad name, spec or store is told before torch, MONAI, Ray and
    # MLflow are imported (seconds).
    if name is not None:
        check_name(name, "--name")  # it becomes $BRATSLAB_HOME/ray_results/<name>
    spec = load_job(job, set_)  # ConfigError → exit 2 with the key named (bratslab.app.main.main)
    try:
        spec.data.store_path()  # the store exists: checked before any run folder is created
    except ConfigError as e:
        raise ConfigError(f"{job}: {e}") from None

    from bratslab.shutdown import Terminated, leave
    from bratslab.train.prepared_data import outputs_for_store
    from bratslab.train.trainer import run_training

    try:
        spec = outputs_for_store(spec)  # model.out_channels fits the store's profile
    except ConfigError as e:
        raise ConfigError(f"{job}: {e}") from None
    console = Console(stderr=True, soft_wrap=True)
    if folds is not None:
        _train_folds(spec, job, folds, name, max_parallel, console)
        return
    t0 = time.monotonic()
    run_name = check_name(name or spec.name, "run name")
    _header(spec, run_name, console)
    try:
        out = run_training(spec, name=name)
    except Terminated as stop:  # SIGTERM (jobs stop, preemption) or Ctrl-C: the run is KILLED
        console.print(
            f"[yellow]stopped by {stop.reason}[/]: rerun the same command to resume "
            "from the latest checkpoint"
        )
        leave(stop.exit_code)  # os._exit if a Ray call is still blocked
    except Exception as e:  # a Ray Train run that failed: one line naming why, exit 1
        _training_failed(e, name or spec.name, spec.scaling.max_failures)
    _summary(out, time.monotonic() - t0, console)


def _header(spec, run_name: str, console) -> None:
    """What runs where: the job, the store, Ray, the run folder and its log file."""
    from bratslab import console as routing
    from bratslab.cluster import ensure_ray
    from bratslab.data.region_set import region_set
    from bratslab.data.store import Store
    from bratslab.train.trainer import run_storage

    tr = spec.training
    store = Store(spec.data.store_path())
    outputs = region_set(store.profile).describe(spec.model.output)
    console.print(
        f"[bold]train[/] {run_name}: {spec.model.arch} ({outputs}), {tr.epochs} epochs × "
        f"{tr.steps_per_epoch} steps, {spec.scaling.num_workers} worker(s), "
        f"store {store.path} ({store.profile.name})"
    )
    run_dir = run_storage().run_dir(run_name)
    log_file = routing.attach(run_dir)
    ensure_ray()
    console.print(
        f"{routing.ray_where()}; run folder {run_dir} (the same command resumes it)"
        + (f"; log {log_file}" if log_file else "")
    )


def _summary(out, seconds: float, console) -> None:
    from bratslab.train.progress import format_duration

    best = out.best_metrics
    console.print(f"[green]done[/] in {format_duration(seconds)}: MLflow run {out.run_id}")
    if best:
        regions = [k for k in best if k.startswith("val/dice_") and k != MEAN_DICE]
        dice = " ".join(f"{k}={best[k]:.3f}" for k in (MEAN_DICE, *regions) if k in best)
        # Epochs are counted from 1 for people (the reports carry 0-based `epoch`).
        console.print(f"best epoch {int(best.get('epoch', 0)) + 1}: {dice}")
    console.print(f"best checkpoint: {out.best_checkpoint}")
    if out.model_uri:
        console.print(f"model: {out.model_uri}")


def _training_failed(error: Exception, name: str, max_failures: int) -> None:
    """Print why a training run failed in one line (the traceback with ``--verbose``), exit 1;
    anything but a failed Ray Train run propagates."""
    import logging

    from bratslab.train.failures import describe, is_training_failure

    if not is_training_failure(error):
        raise error
    logging.getLogger(__name__).debug("training %s failed", name, exc_info=error)
    typer.secho(f"train {name}: {describe(error, max_failures)}", fg="red", err=True)
    raise typer.Exit(1) from None


def _train_folds(spec, job: Path, folds_text: str, name, max_parallel: int, console) -> None:
    """``train --folds``: every selected fold, then a table of their validation scores."""
    from rich.table import Table

    from bratslab.config import ConfigError
    from bratslab.data.store import Store
    from bratslab.shutdown import Terminated, leave
    from bratslab.train.folds import FoldsFailed, fold_table, parse_folds, run_cv

    try:
        folds = parse_folds(folds_text, Store(spec.data.store_path()).num_folds)
    except ConfigError as e:
        typer.secho(f"{job}: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    console.print(
        f"[bold]train[/] {spec.name}: cross-validation over folds {folds}, "
        f"{max_parallel} at a time ({spec.model.arch}, {spec.training.epochs} epochs each)"
    )
    failed = None
    try:
        outcome = run_cv(spec, folds, name=name, max_parallel=max_parallel)
    except Terminated as stop:
        console.print(
            f"[yellow]stopped by {stop.reason}[/]: rerun the same command to resume the "
            "unfinished folds (finished ones are kept)"
        )
        leave(stop.exit_code)  # os._exit if a Ray call is still blocked
    except FoldsFailed as e:
        outcome, failed = e.outcome, e
    table = Table(title=f"cross-validation {outcome.name} (parent run {outcome.parent_run_id})")
    for col in ("fold", "run", "status", "val Dice mean", "val lesion Dice mean"):
        table.add_column(col)
    for row in fold_table(outcome):
        table.add_row(
            str(row["fold"]),
            row["run"],
            row["status"],
            f"{row['dice_mean']:.4f}",
            f"{row['lesion_dice_mean']:.4f}",
        )
    console.print(table)
    if failed is not None:
        typer.secho(str(failed), fg="red", err=True)
        raise typer.Exit(1)
    s = outcome.summary
    for key in ("val/dice_mean", "val/lesion_dice_mean"):
        if f"cv/mean/{key}" in s:
            console.print(f"cv/mean/{key} = {s[f'cv/mean/{key}']:.4f} ± {s[f'cv/std/{key}']:.4f}")
    console.print(
        f"[green]done[/] parent MLflow run {outcome.parent_run_id}; ensemble the folds with "
        f"`bratslab models register --ensemble NAME --cv-run {outcome.parent_run_id}`"
    )


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.command("train", epilog=examples.TRAIN)(train)
