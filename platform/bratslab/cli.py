"""``bratslab <group> <command>``: thin parsing, one function call per stage.

Each pipeline stage owns its commands in ``bratslab/<stage>/cli.py`` with a ``register(app)``
function; this module only assembles them. Heavy imports (torch, ray, mlflow) happen inside the
commands so ``bratslab --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from bratslab.config import ConfigError

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


def _register_stages() -> None:
    from bratslab import demo, spec_cli
    from bratslab.data import cli as data_cli
    from bratslab.evaluate import cli as evaluate_cli
    from bratslab.jobs import cli as jobs_cli
    from bratslab.models import cli as models_cli
    from bratslab.postprocess import cli as postprocess_cli
    from bratslab.tracking import cli as tracking_cli
    from bratslab.train import cli as train_cli
    from bratslab.tune import cli as tune_cli

    for stage in (data_cli, models_cli, train_cli, tune_cli, evaluate_cli, jobs_cli, tracking_cli):
        stage.register(app)
    spec_cli.register(app)
    demo.register(app)
    postprocess_cli.register(app)


_register_stages()


def main() -> None:
    """Console-script entry point: config errors print cleanly and exit 2."""
    try:
        app()
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        sys.exit(2)
