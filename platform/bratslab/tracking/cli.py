"""``bratslab models …``, ``bratslab runs …`` and ``bratslab ui``: browse what MLflow holds.

Thin: parses, calls :mod:`bratslab.tracking.registry` / :mod:`bratslab.tracking.browse`, prints
rich tables, or with ``--json`` only JSON on stdout (datetimes as ISO 8601). MLflow is imported
inside the commands so ``bratslab --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from bratslab.tracking.alias_guard import DEFAULT_SELECTION, SELECTION_TAG

models_app = typer.Typer(
    help="Browse the MLflow model registry: versions, aliases (champion), metrics, downloads.",
    no_args_is_help=True,
)
runs_app = typer.Typer(help="List and compare MLflow runs as tables.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``models`` and ``runs`` groups and the ``ui`` command to the root app."""
    app.add_typer(models_app, name="models")
    app.add_typer(runs_app, name="runs")
    app.command("ui")(ui)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _json_default(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _echo_json(data) -> None:
    """``data`` (dataclasses, lists, dicts) as JSON on stdout, and nothing else there."""
    typer.echo(json.dumps(data, indent=2, default=_json_default))


JSON_HELP = "Print JSON on stdout instead of tables."


def _console():
    from rich.console import Console

    return Console()


# --------------------------------------------------------------------------- models


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Registered models with their latest version and aliases."""
    from rich.table import Table

    from bratslab.tracking import registry
    from bratslab.tracking.mlflow_runs import tracking_uri

    models = registry.list_models()
    if as_json:
        _echo_json(models)
        return
    table = Table(title=f"Registered models ({tracking_uri()})")
    for col in ("name", "versions", "latest", "aliases", "updated"):
        table.add_column(col)
    for m in models:
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items())) or "-"
        table.add_row(
            m.name, str(m.num_versions), m.latest_version or "-", aliases, _fmt(m.updated)
        )
    _console().print(table)
    if not models:
        typer.echo("no registered models yet (a sweep registers its best model)")


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str | None = typer.Option(None, "--version", help="Version number to show."),
    alias: str | None = typer.Option(
        None, "--alias", help="Alias to show (default: champion when no --version)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One version: metrics, params, source run and artifact URI. Without --version/--alias,
    the champion (or every version when there is no champion)."""
    from rich.table import Table

    from bratslab.tracking import registry

    if version and alias:
        _fail("give --version or --alias, not both", 2)
    try:
        if version or alias:
            infos = [registry.get_version(name, alias=alias, version=version)]
        else:
            try:
                infos = [registry.get_version(name, alias=registry.CHAMPION)]
            except registry.RegistryError:
                infos = registry.list_versions(name)
    except registry.RegistryError as e:
        _fail(str(e))
    if as_json:
        _echo_json(infos)
        return
    console = _console()
    for info in infos:
        head = Table(title=f"{info.name} version {info.version}", show_header=False)
        head.add_column("field", style="bold")
        head.add_column("value", overflow="fold")
        for key, value in (
            ("aliases", ", ".join(info.aliases) or "-"),
            ("status", info.status),
            ("created", _fmt(info.created)),
            ("source run", info.run_id or "-"),
            ("model id", info.model_id or "-"),
            ("artifact URI", info.download_uri or info.source),
            ("description", info.description or "-"),
        ):
            head.add_row(key, value)
        console.print(head)
        if info.metrics:
            t = Table(title="metrics")
            t.add_column("metric")
            t.add_column("value", justify="right")
            for k in sorted(info.metrics):
                t.add_row(k, _fmt(info.metrics[k]))
            console.print(t)
        if info.params:
            t = Table(title="params")
            t.add_column("param")
            t.add_column("value", overflow="fold")
            for k in sorted(info.params):
                t.add_row(k, info.params[k])
            console.print(t)


FORCE_HELP = (
    "Move the alias even when the version has no finite value for its selection metric (the "
    f"{SELECTION_TAG} tag a sweep sets, else {DEFAULT_SELECTION}); warns."
)


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version to point the alias at."),
    alias: str = typer.Option("champion", "--alias", help="Alias to move."),
    if_better: str | None = typer.Option(
        None,
        "--if-better",
        help="Only move the alias if this version beats the current holder on METRIC "
        "(e.g. tta/dice_mean).",
    ),
    mode: str = typer.Option("max", "--mode", help="With --if-better: max or min is better."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Point an alias (default: champion) at a version. The version must have a finite value
    for its selection metric unless --force (exit 2 otherwise); with --if-better it must also
    beat the holder on METRIC."""
    from bratslab.tracking import registry

    try:
        registry.check_model_name(name)
    except ValueError as e:
        _fail(str(e), 2)
    try:
        if if_better:
            moved = registry.promote_if_better(name, version, if_better, mode, alias)
        else:
            registry.set_alias(name, version, alias, force=force)
            moved = True
    except registry.AliasRefusedError as e:
        _fail(str(e), 2)
    except (registry.RegistryError, ValueError) as e:
        _fail(str(e))
    if moved:
        typer.echo(f"{name}@{alias} -> version {version}")
    else:
        current = registry.get_version(name, alias=alias)
        typer.echo(
            f"{name}@{alias} stays on version {current.version}: version {version} is not better "
            f"on {if_better}"
        )


@models_app.command("register")
def models_register(
    refs: list[str] = typer.Argument(
        None,
        metavar="RUN_ID | models:/MODEL_ID ...",
        help="A train run id (the model it logged is registered; the newest if it logged "
        "several) or a logged model URI, models:/<model_id>. With --ensemble: two or more of "
        "those (or registered versions, models:/NAME/V), or none with --cv-run.",
    ),
    name: str | None = typer.Option(None, "--name", help="Registered model name (created if new)."),
    ensemble: str | None = typer.Option(
        None,
        "--ensemble",
        metavar="NAME",
        help="Register the models as ONE version of NAME holding them all (members/<m>/ + "
        "ensemble.json, sha256 of every file); predict averages their probabilities.",
    ),
    cv_run: str | None = typer.Option(
        None,
        "--cv-run",
        metavar="PARENT_RUN_ID",
        help="With --ensemble: the members are the fold runs of this cross-validation run "
        "(`train --folds`).",
    ),
    alias: str | None = typer.Option(
        None,
        "--alias",
        help="Also point this alias at the new version, without comparing (`models promote "
        "--if-better` compares first); refused (exit 2, the version stays registered) when "
        "the version has no finite selection metric, unless --force.",
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Register a run's logged model as a new version of NAME and print the version; with
    --ensemble, several models (or a CV run's folds) as one ensemble version."""
    from mlflow.exceptions import MlflowException

    from bratslab.tracking import registry
    from bratslab.tracking.model_store import ModelIntegrityError

    refs = list(refs or [])
    if ensemble is None and (cv_run or name is None or len(refs) != 1):
        _fail("give one RUN_ID or models:/MODEL_ID and --name, or --ensemble NAME", 2)
    if ensemble is not None and (name or (cv_run is None) == (not refs)):
        _fail("--ensemble NAME takes two or more models or --cv-run PARENT_RUN_ID (not --name)", 2)
    try:
        if ensemble is not None:
            version, members = registry.register_ensemble(
                ensemble, refs, cv_run_id=cv_run, alias=alias, force=force
            )
            name = ensemble
            listed = ", ".join(f"{m.name}={m.source}" for m in members)
            typer.echo(f"registered an ensemble of {len(members)} ({listed}) as {name} "
                       f"version {version}")  # fmt: skip
        else:
            version, source = registry.register_logged_model(refs[0], name, alias, force=force)
            typer.echo(f"registered {source} as {name} version {version}")
    except registry.AliasRefusedError as e:
        _fail(f"registered, but the alias was not moved: {e}", 2)
    except ValueError as e:
        _fail(str(e), 2)
    except (registry.RegistryError, MlflowException, ModelIntegrityError, OSError) as e:
        _fail(getattr(e, "message", None) or str(e))
    if alias:
        typer.echo(f"{name}@{alias} -> version {version}")


@models_app.command("compare-ensemble")
def models_compare_ensemble(
    ref: str = typer.Argument(
        ...,
        help="An ensemble version: NAME/VERSION, NAME@ALIAS or a "
        "models:/ URI (or a local ensemble folder).",
    ),  # fmt: skip
    store: Path | None = typer.Option(
        None,
        "--store",
        help="Preprocessed store whose labelled cases are scored. Default: the store the "
        "members trained on, where every member saw most cases in training; a separate store "
        "(e.g. `data synth --shift strong` → `data preprocess`) is the honest test.",
    ),
    tta: str = typer.Option("none", "--tta", help="none, flips or flips+rot90."),
    max_cases: int | None = typer.Option(None, "--max-cases", min=1, help="Score this many."),
    challenge: str = typer.Option("gli", "--challenge", help="Lesion-wise parameters."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log to MLflow."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score an ensemble and each of its members on a store: voxel and lesion-wise Dice per
    region, and whether the ensemble beats its best member (logged to the version's run)."""
    from rich.table import Table

    from bratslab.inference.ensemble_comparison import compare_ensemble, log_comparison, verdicts
    from bratslab.tracking.model_store import ModelIntegrityError

    try:
        report = compare_ensemble(
            ref, store, tta=tta, max_cases=max_cases, challenge=challenge, device=device
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    except ModelIntegrityError as e:
        _fail(str(e))
    if not no_log:
        log_comparison(ref, report)
    if as_json:
        _echo_json(report)
        return
    console = _console()
    if report.same_store:
        typer.secho(f"warning: {report.caveat}", fg="yellow", err=True)
    table = Table(title=f"{ref} on {report.store} ({report.cases} cases, TTA {tta})")
    cols = ("dice_wt", "dice_tc", "dice_et", "dice_mean")
    cols += ("lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et", "lesion_dice_mean")
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c.replace("lesion_dice", "lesion").replace("dice_", ""), justify="right")
    for label, metrics in [*report.members.items(), ("ENSEMBLE", report.ensemble)]:
        table.add_row(label, *(_fmt(metrics.get(c)) for c in cols))
    console.print(table)
    for line in verdicts(report):
        typer.echo(line)  # one unwrapped line each: scripts grep "does NOT beat"


@models_app.command("download")
def models_download(
    ref: str = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION or a models:/ URI."),
    dst: Path = typer.Argument(..., help="Folder to create (must not exist or be empty)."),
) -> None:
    """Download a registered version as a self-contained folder (weights, model.json,
    post-processing thresholds, version.json, SHA256SUMS): `bratslab predict --model FOLDER`
    then predicts exactly as with the registry reference."""
    from bratslab.tracking import registry
    from bratslab.tracking.download import download
    from bratslab.tracking.model_store import ModelIntegrityError

    try:
        out = download(ref, dst)
    except (registry.RegistryError, FileExistsError, FileNotFoundError, ModelIntegrityError) as e:
        _fail(str(e))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    typer.echo(f"downloaded {ref} to {out} ({len(files)} files)")


# --------------------------------------------------------------------------- runs


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

    try:
        rows = browse.list_runs(experiment, sweep, max_results=limit)
    except browse.RunLookupError as e:
        _fail(str(e))
    if as_json:
        _echo_json(rows)
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
            r.run_id,
            r.name,
            r.experiment,
            r.shown_status,
            _fmt(r.start),
            _duration(r.duration_s),
            *(r.params.get(p, "-") for p in params),
            *(_fmt(r.metrics.get(m)) for m in metrics),
        )
    _console().print(table)


@runs_app.command("compare")
def runs_compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids."),
    all_params: bool = typer.Option(
        False, "--all-params", help="Show every param, not only those that differ."
    ),
) -> None:
    """Runs side by side: metrics (best per row in bold) and the params that differ."""
    from rich.table import Table

    from bratslab.tracking import browse

    try:
        rows = browse.get_runs(run_ids)
    except browse.RunLookupError as e:
        _fail(str(e))
    console = _console()
    metrics = Table(title="metrics (latest value; bold = best)")
    metrics.add_column("metric")
    for r in rows:
        metrics.add_column(f"{r.name or r.run_id[:8]}\n{r.run_id[:8]}", justify="right")
    for key in sorted(set().union(*(r.metrics for r in rows))):
        values = [r.metrics.get(key) for r in rows]
        present = [v for v in values if v is not None]
        lower_better = "loss" in key or "hd95" in key
        best = (min if lower_better else max)(present) if len(present) > 1 else None
        cells = [
            f"[bold]{_fmt(v)}[/bold]" if v is not None and v == best else _fmt(v) for v in values
        ]
        metrics.add_row(key, *cells)
    console.print(metrics)
    keys = set().union(*(r.params for r in rows))
    shown = sorted(keys if all_params else browse.differing_keys([r.params for r in rows]))
    params = Table(title="params" + ("" if all_params else " that differ"))
    params.add_column("param")
    for r in rows:
        params.add_column(r.name or r.run_id[:8], overflow="fold")
    for key in shown:
        params.add_row(key, *(r.params.get(key, "-") for r in rows))
    console.print(params)
    if not shown and not all_params:
        typer.echo(f"all {len(keys)} params are identical")


# --------------------------------------------------------------------------- ui


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

    It opens on the training runs of the experiment that ran last; the URL is printed once the
    server answers.
    """
    import os

    from bratslab.settings import get_settings
    from bratslab.tracking.mlflow_runs import latest_experiment, mark_training_experiments
    from bratslab.tracking.ui import is_loopback_host, serve, server_command

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
    latest = latest_experiment(uri)
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    page = f"{base}/#/experiments/{latest}/runs" if latest else base
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
        _fail(f"the MLflow UI did not start (exit {code}): is port {port} already in use?", 1)
