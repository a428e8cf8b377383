"""``bratslab models …``: browse and manage the MLflow model registry.

Thin: parses, calls :mod:`bratslab.tracking.registry` and its neighbours, prints rich tables, or
with ``--json`` only JSON on stdout (datetimes as ISO 8601). MLflow is imported inside the
commands so ``bratslab --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from bratslab.app.cli.choices import TTAChoice, challenge_option, device_option
from bratslab.app.cli.output import JSON_HELP, echo_json, fail, fmt, rich_console
from bratslab.tracking.alias_guard import DEFAULT_SELECTION, SELECTION_TAG

models_app = typer.Typer(
    help="Browse the MLflow model registry: versions, aliases (champion), metrics, downloads.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``models`` group to the root app."""
    app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Registered models with their latest version and aliases."""
    from rich.table import Table

    from bratslab.tracking import registry
    from bratslab.tracking.mlflow_runs import tracking_uri

    models = registry.list_models()
    if as_json:
        echo_json(models)
        return
    table = Table(title=f"Registered models ({tracking_uri()})")
    for col in ("name", "versions", "latest", "aliases", "updated"):
        table.add_column(col)
    for m in models:
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items())) or "-"
        table.add_row(m.name, str(m.num_versions), m.latest_version or "-", aliases, fmt(m.updated))
    rich_console().print(table)
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
        fail("give --version or --alias, not both", 2)
    try:
        if version or alias:
            infos = [registry.get_version(name, alias=alias, version=version)]
        else:
            try:
                infos = [registry.get_version(name, alias=registry.CHAMPION)]
            except registry.RegistryError:
                infos = registry.list_versions(name)
    except registry.RegistryError as e:  # no such model, version or alias
        fail(str(e), 2)
    if as_json:
        echo_json(infos)
        return
    console = rich_console()
    for info in infos:
        head = Table(title=f"{info.name} version {info.version}", show_header=False)
        head.add_column("field", style="bold")
        head.add_column("value", overflow="fold")
        for key, value in (
            ("aliases", ", ".join(info.aliases) or "-"),
            ("status", info.status),
            ("created", fmt(info.created)),
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
                t.add_row(k, fmt(info.metrics[k]))
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
    mode: Literal["max", "min"] = typer.Option(
        "max", "--mode", help="With --if-better: whether a larger or a smaller value is better."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Point an alias (default: champion) at a version. The version must have a finite value
    for its selection metric unless --force (exit 2 otherwise); with --if-better it must also
    beat the holder on METRIC."""
    from bratslab.tracking import registry

    try:
        registry.check_model_name(name)
    except ValueError as e:
        fail(str(e), 2)
    try:
        if if_better:
            moved = registry.promote_if_better(name, version, if_better, mode, alias)
        else:
            registry.set_alias(name, version, alias, force=force)
            moved = True
    except registry.AliasRefusedError as e:
        fail(str(e), 2)
    except (registry.RegistryError, ValueError) as e:  # not found, or not comparable
        fail(str(e), 2)
    except registry.PromotionUnsettled as e:
        fail(str(e))
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
        help="A train run id or a unique prefix of one (the model it logged is registered; "
        "the newest if it logged "
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
    from bratslab.tracking import registry
    from bratslab.tracking.model_store import ModelIntegrityError

    refs = list(refs or [])
    if ensemble is None and (cv_run or name is None or len(refs) != 1):
        fail("give one RUN_ID or models:/MODEL_ID and --name, or --ensemble NAME", 2)
    if ensemble is not None and (name or (cv_run is None) == (not refs)):
        fail("--ensemble NAME takes two or more models or --cv-run PARENT_RUN_ID (not --name)", 2)
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
        fail(f"registered, but the alias was not moved: {e}", 2)
    except ValueError as e:
        fail(str(e), 2)
    except registry.RegistryError as e:  # no such run, logged model or finished fold
        fail(str(e), 2)
    except (ModelIntegrityError, OSError) as e:
        fail(getattr(e, "message", None) or str(e))
    except Exception as e:
        if not _raised_by_mlflow(e):
            raise
        fail(getattr(e, "message", None) or str(e))  # MlflowException: its message alone
    if alias:
        typer.echo(f"{name}@{alias} -> version {version}")


def _raised_by_mlflow(error: Exception) -> bool:
    """An MLflow error (``MlflowException`` and its kin), told apart without importing MLflow
    outside ``bratslab.tracking``."""
    return type(error).__module__.partition(".")[0] == "mlflow"


@models_app.command("compare-ensemble")
def models_compare_ensemble(
    ref: str = typer.Argument(
        ...,
        help="An ensemble version, models:/NAME@ALIAS or models:/NAME/VERSION (or a local "
        "ensemble folder); NAME@ALIAS and NAME/VERSION are read as those, with a hint.",
    ),  # fmt: skip
    store: Path | None = typer.Option(
        None,
        "--store",
        help="Preprocessed store whose labelled cases are scored. Default: the store the "
        "members trained on, where every member saw most cases in training; a separate store "
        "(e.g. `data synth --shift strong` → `data preprocess`) is the honest test.",
    ),
    tta: TTAChoice = typer.Option(
        "none", "--tta", help="Test-time augmentation of the comparison."
    ),
    max_cases: int | None = typer.Option(None, "--max-cases", min=1, help="Score this many."),
    challenge: str = challenge_option(),
    device: str = device_option(),
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
        fail(str(e), 2)
    except ModelIntegrityError as e:
        fail(str(e))
    if not no_log:
        log_comparison(ref, report)
    if as_json:
        echo_json(report)
        return
    console = rich_console()
    if report.same_store:
        typer.secho(f"warning: {report.caveat}", fg="yellow", err=True)
    table = Table(title=f"{ref} on {report.store} ({report.cases} cases, TTA {tta})")
    cols = ("dice_wt", "dice_tc", "dice_et", "dice_mean")
    cols += ("lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et", "lesion_dice_mean")
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c.replace("lesion_dice", "lesion").replace("dice_", ""), justify="right")
    for label, metrics in [*report.members.items(), ("ENSEMBLE", report.ensemble)]:
        table.add_row(label, *(fmt(metrics.get(c)) for c in cols))
    console.print(table)
    for line in verdicts(report):
        typer.echo(line)  # one unwrapped line each: scripts grep "does NOT beat"


@models_app.command("download")
def models_download(
    ref: str = typer.Argument(
        ...,
        help="models:/NAME@ALIAS or models:/NAME/VERSION (NAME@ALIAS, NAME/VERSION and a "
        "plain NAME, meaning its champion, are read as those, with a hint).",
    ),
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
    except (registry.RegistryError, FileExistsError, FileNotFoundError) as e:
        fail(str(e), 2)  # no such version, or a destination that is not an empty folder
    except ModelIntegrityError as e:
        fail(str(e))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    typer.echo(f"downloaded {ref} to {out} ({len(files)} files)")
