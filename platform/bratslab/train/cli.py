"""``bratslab train JOB.yaml [--set key.sub=value ...] [--name NAME]``."""

from __future__ import annotations

from pathlib import Path

import typer

DICE_KEYS = ("val/dice_mean", "val/dice_wt", "val/dice_tc", "val/dice_et")


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
) -> None:
    """Train a model with Ray Train as described by JOB; rerunning a name resumes it."""
    from rich.console import Console

    from bratslab.config import ConfigError
    from bratslab.names import check_name
    from bratslab.shutdown import Terminated
    from bratslab.spec import load_job
    from bratslab.train.trainer import run_training

    if name is not None:
        check_name(name, "--name")  # it becomes $BRATSLAB_HOME/ray_results/<name>
    spec = load_job(job, set_)  # ConfigError → exit 2 with the key named (bratslab.cli.main)
    try:
        spec.data.store_path()  # the store exists: checked before any run folder is created
    except ConfigError as e:
        raise ConfigError(f"{job}: {e}") from None
    console = Console(stderr=True)
    console.print(
        f"[bold]train[/] {spec.name}: {spec.model.arch}, {spec.training.epochs} epochs × "
        f"{spec.training.steps_per_epoch} steps, {spec.scaling.num_workers} worker(s)"
    )
    try:
        out = run_training(spec, name=name)
    except Terminated as stop:  # SIGTERM (jobs stop, preemption) or Ctrl-C: the run is KILLED
        console.print(
            f"[yellow]stopped by {stop.reason}[/]: rerun the same command to resume "
            "from the latest checkpoint"
        )
        raise typer.Exit(stop.exit_code) from None
    best = out.best_metrics
    console.print(f"[green]done[/] MLflow run {out.run_id}")
    if best:
        dice = " ".join(f"{k}={best.get(k, float('nan')):.3f}" for k in DICE_KEYS)
        console.print(f"best epoch {best.get('epoch')}: {dice}")
    console.print(f"best checkpoint: {out.best_checkpoint}")
    if out.model_uri:
        console.print(f"model: {out.model_uri}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
    app.command("train")(train)
