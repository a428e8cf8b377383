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
        None, "--name", help="Run name (default: the job's `name`); an existing name resumes."
    ),
) -> None:
    """Train a model with Ray Train as described by JOB; rerunning a name resumes it."""
    from rich.console import Console

    from bratslab.jobs.spec import load_job
    from bratslab.train.trainer import run_training

    spec = load_job(job, set_)  # ConfigError → exit 2 with the key named (bratslab.cli.main)
    console = Console(stderr=True)
    console.print(
        f"[bold]train[/] {spec.name}: {spec.model.arch}, {spec.training.epochs} epochs × "
        f"{spec.training.steps_per_epoch} steps, {spec.scaling.num_workers} worker(s)"
    )
    out = run_training(spec, name=name)
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
