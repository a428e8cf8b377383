"""What the registry and run commands print: failures on stderr, table cells, JSON on stdout.

Shared by ``bratslab models``, ``bratslab runs`` and ``bratslab ui`` (:mod:`bratslab.app.cli`),
so their tables format numbers and dates alike and ``--json`` prints only JSON on stdout.
"""

from __future__ import annotations

import dataclasses
import json

import typer


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` in red on stderr and exit with ``code``."""
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def fmt(value) -> str:
    """A table cell: ``-`` for None, 4 decimals for floats, dates to the second."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def json_default(value):
    """JSON for what json cannot write: dataclasses as dicts, datetimes as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def echo_json(data) -> None:
    """``data`` (dataclasses, lists, dicts) as JSON on stdout, and nothing else there."""
    typer.echo(json.dumps(data, indent=2, default=json_default))


JSON_HELP = "Print JSON on stdout instead of tables."


def rich_console():
    """A rich console on stdout (rich is imported on first use)."""
    from rich.console import Console

    return Console()
