"""``bratslab ui``: the MLflow UI on the embedded tracking store."""

from __future__ import annotations

import typer

from bratslab.app.cli.output import fail


def register(app: typer.Typer) -> None:
    """Add the ``ui`` command to the root app."""
    app.command("ui")(ui)


def ui(
    port: int = typer.Option(5000, "--port", "-p", min=1, max=65535, help="Port to serve on."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Interface to bind. Loopback by default: the UI has no login and shows every "
        "run; reach it from elsewhere through an SSH tunnel.",
    ),
) -> None:
    """Start the MLflow UI on the embedded tracking store (Ctrl-C stops it).

    It opens on the training runs of the experiment that ran last, with the lesion-wise and voxel
    Dice per region (and TTA scores after a sweep) as columns; the URL is printed once the
    server answers.
    """
    import os

    from bratslab.settings import get_settings
    from bratslab.tracking.mlflow_runs import client, latest_experiment, mark_training_experiments
    from bratslab.tracking.ui import is_loopback_host, serve, server_command
    from bratslab.tracking.ui_view import runs_page, write_views

    settings = get_settings()
    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"MLFLOW_TRACKING_URI points at a tracking server: its UI is {uri}")
        return
    if not is_loopback_host(host):
        typer.secho(
            f"warning: binding {host}: anyone who reaches this port can read and change every "
            "run and model (the MLflow UI has no login here).",
            fg="yellow",
            err=True,
        )
    # Experiments made before bratslab set their kind would open in MLflow's GenAI view.
    mark_training_experiments(uri)
    # Each experiment's runs table opens with its Dice columns (MLflow shows none at first);
    # a store that refuses the tag (read-only, locked) still gets its UI, without them.
    try:
        write_views(client(uri))
    except Exception as e:  # noqa: BLE001 - the UI matters more than its default columns
        typer.secho(f"warning: default columns not set ({e})", fg="yellow", err=True)
    latest = latest_experiment(uri)
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    page = runs_page(base, latest) if latest else base
    # No job runner (MLflow's GenAI jobs; bratslab has none): a process less to start, and the
    # server then exits on SIGTERM at once instead of waiting for it. A user's setting wins.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    typer.echo(f"starting the MLflow UI for {uri} …", err=True)
    code, ready = serve(
        server_command(settings, host, port),
        base,
        lambda: typer.echo(f"MLflow UI at {page}  (Ctrl-C to stop)", err=True),
    )
    if not ready:
        fail(f"the MLflow UI did not start (exit {code}): is port {port} already in use?", 1)
