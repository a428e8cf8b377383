"""``bratslab demo``: the pipeline end to end on synthetic data, as far as it exists."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo() -> None:
    """Run the whole pipeline on a small synthetic dataset and print a summary."""
    raise typer.Exit(0)
