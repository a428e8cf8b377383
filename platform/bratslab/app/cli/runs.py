"""``bratslab runs …``: list and compare MLflow runs as tables.

Thin: parses, calls :mod:`bratslab.tracking.browse`, prints rich tables or, with ``--json``,
only JSON on stdout. MLflow is imported inside the commands so ``bratslab --help`` stays fast.
"""

from __future__ import annotations

import typer

from bratslab.app.cli.output import JSON_HELP, echo_json, fail, fmt, rich_console

runs_app = typer.Typer(help="List and compare MLflow runs as tables.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``runs`` group to the root app."""
    app.add_typer(runs_app, name="runs")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@runs_app.command("list")
def runs_list(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Experiment name."),
    sweep: str | None = typer.Option(
        None, "--sweep", "-s", help="Only the trials of this sweep (parent run id or name)."
    ),
    limit: int = typer.Option(50, "--limit", help="Show at most this many runs."),
    as_json: bool = typer.Option(
        False, "--json", help=JSON_HELP + " Each run carries all its metrics, params and tags."
    ),
) -> None:
    """Runs, newest first, with their headline metrics."""
    from rich.table import Table

    from bratslab.tracking import browse
    from bratslab.tracking.run_ids import short

    try:
        rows = browse.list_runs(experiment, sweep, max_results=limit)
    except browse.RunLookupError as e:  # no such experiment, sweep or run
        fail(str(e), 2)
    if as_json:
        echo_json(rows)
        return
    metrics = [m for m in browse.HEADLINE_METRICS if any(m in r.metrics for r in rows)]
    params = [p for p in browse.HEADLINE_PARAMS if any(p in r.params for r in rows)]
    table = Table(title="Runs" + (f" of sweep {sweep}" if sweep else ""))
    for col in ("run id", "name", "experiment", "status", "started", "duration"):
        table.add_column(col, overflow="fold")
    for p in params:
        table.add_column(p)
    for m in metrics:
        table.add_column(m, justify="right")
    for r in rows:
        table.add_row(
            short(r.run_id),
            r.name,
            r.experiment,
            r.shown_status,
            fmt(r.start),
            _duration(r.duration_s),
            *(r.params.get(p, "-") for p in params),
            *(fmt(r.metrics.get(m)) for m in metrics),
        )
    rich_console().print(table)


@runs_app.command("compare")
def runs_compare(
    run_ids: list[str] = typer.Argument(
        ..., help="Two or more run ids, or unique prefixes of them (tables show 8 characters)."
    ),
    all_params: bool = typer.Option(
        False, "--all-params", help="Show every param, not only those that differ."
    ),
) -> None:
    """Runs side by side: metrics (best per row in bold) and the params that differ."""
    from rich.table import Table

    from bratslab.tracking import browse
    from bratslab.tracking.run_ids import short

    try:
        rows = browse.get_runs(run_ids)
    except browse.RunLookupError as e:  # no such experiment, sweep or run
        fail(str(e), 2)
    console = rich_console()
    metrics = Table(title="metrics (latest value; bold = best)")
    metrics.add_column("metric")
    for r in rows:
        metrics.add_column(f"{r.name or short(r.run_id)}\n{short(r.run_id)}", justify="right")
    for key in sorted(set().union(*(r.metrics for r in rows))):
        values = [r.metrics.get(key) for r in rows]
        present = [v for v in values if v is not None]
        lower_better = "loss" in key or "hd95" in key
        best = (min if lower_better else max)(present) if len(present) > 1 else None
        cells = [
            f"[bold]{fmt(v)}[/bold]" if v is not None and v == best else fmt(v) for v in values
        ]
        metrics.add_row(key, *cells)
    console.print(metrics)
    keys = set().union(*(r.params for r in rows))
    shown = sorted(keys if all_params else browse.differing_keys([r.params for r in rows]))
    params = Table(title="params" + ("" if all_params else " that differ"))
    params.add_column("param")
    for r in rows:
        params.add_column(r.name or short(r.run_id), overflow="fold")
    for key in shown:
        params.add_row(key, *(r.params.get(key, "-") for r in rows))
    console.print(params)
    if not shown and not all_params:
        typer.echo(f"all {len(keys)} params are identical")
