"""``bratslab demo``: the whole pipeline end to end on synthetic data (:mod:`bratslab.app.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the root app."""
    app.command("demo")(demo)


def demo(
    cases: int = typer.Option(12, min=4, help="Synthetic training cases."),
    holdout: int = typer.Option(2, min=1, help="Held-out cases predicted and scored."),
    shape: tuple[int, int, int] = typer.Option(
        (96, 96, 64), help="Volume shape of the synthetic cases (X Y Z voxels)."
    ),
    job: Path = typer.Option(
        None, help="Sweep job spec (default: jobs/demo.yaml, three architectures)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Dotted override of the job, e.g. --set sweep.num_trials=3."
    ),
    workers: int = typer.Option(2, min=1, help="Preprocessing/prediction tasks in flight."),
    out: Path = typer.Option(
        None, help="Demo folder (default: $BRATSLAB_HOME/demo); reruns reuse its data."
    ),
) -> None:
    """Run the whole pipeline on a small synthetic dataset and print a results table."""
    from bratslab.app.demo import run_demo

    run_demo(cases, holdout, shape, job, overrides, workers, out)
