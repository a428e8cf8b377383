"""The ``bratslab`` command: the Typer root that every command group registers on.

Each ``bratslab <group>`` lives in ``bratslab/app/cli/<group>.py`` with a ``register(app)``
function; this module only assembles them. Heavy imports (torch, ray, mlflow) and the stages
themselves are imported inside the commands, so ``bratslab --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from bratslab.compat import typer_help
from bratslab.config import ConfigError

typer_help.install()  # flags without <bool>, arguments as JOB in usage (bratslab.compat)

app = typer.Typer(
    name="bratslab",
    help="Distributed experimentation platform for 3-D brain tumour segmentation (BraTS) on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"bratslab {version('bratslab')}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    _version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print bratslab's version and exit.",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Log at DEBUG level on the console, Ray's, MLflow's and Optuna's output included "
        "(also BRATSLAB_LOG_LEVEL=DEBUG); without it, run commands print their own lines and "
        "keep the rest in a log file.",
    ),
) -> None:
    # One source of truth for paths and URIs: resolved here, in the driver, to absolute values
    # that every Ray worker, Tune trial and MLflow call of this command then inherits.
    from bratslab.console import configure
    from bratslab.settings import pin_settings

    pin_settings()
    configure(ctx.invoked_subcommand, verbose)


def _register_groups() -> None:
    from bratslab.app.cli import (
        arch,
        data,
        demo,
        evaluate,
        jobs,
        models,
        postprocess,
        recipe,
        runs,
        spec,
        sweep,
        train,
        ui,
    )

    # Registration order is the order `bratslab --help` lists the commands in.
    for group in (data, arch, train, sweep, evaluate, jobs, models, runs, ui, spec, demo):
        group.register(app)
    postprocess.register(app)
    recipe.register(app)


_register_groups()


def command_tree():
    """The root click command of ``bratslab``: what job submission checks command lines against
    (:func:`bratslab.jobs.entrypoint.resolve_command`)."""
    import typer.main

    return typer.main.get_command(app)


def main() -> None:
    """Console-script entry point: config errors print cleanly and exit 2."""
    try:
        app()
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        sys.exit(2)
