"""The MLflow model registry: register versions, move the ``champion`` alias, look models up.

MLflow 3 registers *logged models* (``models:/<model_id>`` from
:func:`bratslab.tracking.model_store.log_model_dir`, or ``runs:/<run>/<name>``). Stages are
deprecated; a version's role is an alias (``champion``), and ``models:/NAME@champion`` resolves
to whichever version holds it now.

Concurrency: :func:`promote_if_better` reads the current champion, compares, then sets the
alias. The registry has no compare-and-set, so alias writes are **last-writer-wins**: two sweeps
promoting at the same moment can both read the old champion and the later write stands even if
it is the worse model. Run promotions from one place (the sweep driver) or re-check afterwards
(``bratslab models show NAME --alias champion``).

Works against the embedded SQLite store and a tracking server alike (the URI comes from
settings or the ``uri`` argument).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from bratslab.tracking.mlflow_runs import client, global_uris, tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"


class RegistryError(LookupError):
    """A registered model, version or alias does not exist, or a reference is malformed."""


@dataclass
class VersionInfo:
    """One registered model version, flattened for display and comparison."""

    name: str
    version: str
    aliases: list[str]
    status: str
    created: datetime | None
    source: str
    download_uri: str
    run_id: str | None
    model_id: str | None
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelSummary:
    """A registered model: its latest version and where each alias points."""

    name: str
    latest_version: str | None
    num_versions: int
    aliases: dict[str, str]
    updated: datetime | None
    description: str


def _when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000) if ms else None


# --------------------------------------------------------------------------- references


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` / ``NAME/VERSION`` / ``NAME`` (optionally prefixed ``models:/``) →
    ``(name, alias, version)``; a bare NAME means its ``champion``."""
    text = ref.removeprefix("models:/").strip()
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias:
            raise RegistryError(f"{ref!r}: expected NAME@ALIAS")
        return name, alias, None
    if "/" in text:
        name, _, version = text.rpartition("/")
        if not name or not version.isdigit():
            raise RegistryError(f"{ref!r}: expected NAME/VERSION with a numeric version")
        return name, None, version
    if not text:
        raise RegistryError(f"{ref!r}: empty model reference")
    return text, CHAMPION, None


def model_uri(name: str, alias: str | None = None, version: str | int | None = None) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias and version")
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


# --------------------------------------------------------------------------- writing


def register(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    uri: str | None = None,
    await_s: int = 300,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created if needed).

    Args:
        model_uri: ``models:/<model_id>`` or ``runs:/<run_id>/<artifact>``.
        name: Registered model name, e.g. ``bratslab-ssa``.
        tags: Version tags; values are stored as strings (metrics like ``tta/dice_mean`` as
            their repr, so :func:`promote_if_better` can compare them).
    Returns:
        The new version number, as a string (MLflow's type for versions).
    """
    uri = tracking_uri(uri)
    str_tags = {k: _tag_value(v) for k, v in (tags or {}).items()}
    # MLflow resolves ``models:/<model_id>`` sources through its *global* tracking URI.
    with global_uris(uri):
        mv = mlflow.register_model(model_uri, name, await_registration_for=await_s, tags=str_tags)
    log.info("registered %s as %s version %s", model_uri, name, mv.version)
    return str(mv.version)


def _tag_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def set_alias(name: str, version: str | int, alias: str = CHAMPION, *, uri: str | None = None):
    """Point ``alias`` at ``version`` unconditionally (last-writer-wins)."""
    c = client(uri)
    get_version(name, version=version, uri=uri)  # a clear error for a missing version
    c.set_registered_model_alias(name, alias, str(version))
    log.info("%s@%s -> version %s", name, alias, version)


def promote_if_better(
    name: str,
    version: str | int,
    metric: str,
    mode: str = "max",
    alias: str = CHAMPION,
    *,
    uri: str | None = None,
) -> bool:
    """Move ``alias`` to ``version`` only if it beats the version holding it now.

    The metric is looked up per version by :func:`version_metric` (a version tag first, then
    the logged model's metrics, then its source run's). Ties keep the current holder. A
    holder without the metric is replaced. Compare-then-set: see the module docstring for the
    last-writer-wins caveat.

    Returns:
        True when ``alias`` now points at ``version`` (moved, or already there).
    Raises:
        RegistryError: ``version`` does not exist or has no value for ``metric``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    candidate = get_version(name, version=version, uri=uri)
    new = candidate.metrics.get(metric)
    if new is None or not math.isfinite(new):
        raise RegistryError(f"{name} version {version}: no finite value for metric {metric!r}")
    try:
        current = get_version(name, alias=alias, uri=uri)
    except RegistryError:
        current = None
    if current is not None:
        if current.version == candidate.version:
            return True
        old = current.metrics.get(metric)
        if old is not None and math.isfinite(old):
            better = new > old if mode == "max" else new < old
            if not better:
                log.info(
                    "%s v%s (%s=%.4f) does not beat %s v%s (%.4f): alias %r stays",
                    name, version, metric, new, alias, current.version, old, alias,
                )  # fmt: skip
                return False
    client(uri).set_registered_model_alias(name, alias, str(candidate.version))
    log.info("%s@%s -> version %s (%s=%.4f)", name, alias, candidate.version, metric, new)
    return True


# --------------------------------------------------------------------------- reading


def _name_filter(name: str) -> str:
    escaped = name.replace("'", "\\'")
    return f"name='{escaped}'"


def _numeric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _model_id_from(source: str | None) -> str | None:
    """``models:/m-abc`` (a logged model's URI, MLflow 3) → ``m-abc``."""
    rest = (source or "").removeprefix("models:/")
    return rest if rest != (source or "") and rest.startswith("m-") and "/" not in rest else None


def _describe(mv, *, uri: str | None) -> VersionInfo:
    c = client(uri)
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    # Lowest precedence first: the source run, then the logged model, then version tags.
    if mv.run_id:
        try:
            run = c.get_run(mv.run_id)
            metrics.update(run.data.metrics)
            params.update(run.data.params)
        except MlflowException:
            log.warning("%s v%s: source run %s is gone", mv.name, mv.version, mv.run_id)
    for m in getattr(mv, "metrics", None) or []:
        metrics[m.key] = m.value
    for p in getattr(mv, "params", None) or []:
        params[p.key] = p.value
    tags = dict(mv.tags or {})
    metrics.update(_numeric_tags(tags))
    try:
        download = c.get_model_version_download_uri(mv.name, mv.version)
    except MlflowException:
        download = mv.source or ""
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=list(mv.aliases or []),
        status=str(mv.status),
        created=_when(mv.creation_timestamp),
        source=mv.source or "",
        download_uri=download,
        run_id=mv.run_id,
        model_id=getattr(mv, "model_id", None) or _model_id_from(mv.source),
        description=mv.description or "",
        tags=tags,
        metrics=metrics,
        params=params,
    )


def get_version(
    name: str,
    alias: str | None = None,
    version: str | int | None = None,
    *,
    uri: str | None = None,
) -> VersionInfo:
    """A registered version by ``alias`` or ``version`` (exactly one), with its metrics (source
    run, logged model and numeric version tags merged), params, source run and artifact URIs.

    Raises:
        RegistryError: the model, version or alias does not exist.
    """
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias and version")
    c = client(uri)
    try:
        if alias is not None:
            mv = c.get_model_version_by_alias(name, alias)
        else:
            mv = c.get_model_version(name, str(version))
    except MlflowException as e:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        known = ", ".join(m.name for m in c.search_registered_models(max_results=20)) or "none"
        raise RegistryError(
            f"registered model {name!r} has no {what} "
            f"(store {tracking_uri(uri)}; registered models: {known}): {e.message}"
        ) from None
    return _describe(mv, uri=uri)


def version_metric(name: str, version: str | int, metric: str, *, uri: str | None = None):
    """The value of ``metric`` for a version, or None (see :func:`get_version`)."""
    return get_version(name, version=version, uri=uri).metrics.get(metric)


def source_run_id(model_uri: str, *, uri: str | None = None) -> str | None:
    """The run that logged a model: ``models:/<model_id>`` (a logged model), ``models:/NAME@A``
    or ``models:/NAME/V`` (a registered version), or ``runs:/<run_id>/...``.

    Raises:
        RegistryError: the model, version or alias does not exist.
    """
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0] or None
    model_id = _model_id_from(model_uri)
    if model_id is not None:
        try:
            return client(uri).get_logged_model(model_id).source_run_id
        except MlflowException as e:
            raise RegistryError(f"{model_uri}: {e.message}") from None
    name, alias, version = parse_ref(model_uri)
    return get_version(name, alias=alias, version=version, uri=uri).run_id


def list_versions(name: str, *, uri: str | None = None) -> list[VersionInfo]:
    """All versions of ``name``, newest first."""
    c = client(uri)
    versions = c.search_model_versions(_name_filter(name))
    if not versions:
        c_models = [m.name for m in c.search_registered_models()]
        if name not in c_models:
            raise RegistryError(f"no registered model {name!r} in {tracking_uri(uri)}")
    return [
        _describe(v, uri=uri) for v in sorted(versions, key=lambda v: int(v.version), reverse=True)
    ]


def list_models(*, uri: str | None = None) -> list[ModelSummary]:
    """Every registered model with its latest version and aliases, sorted by name."""
    c = client(uri)
    out = []
    for rm in c.search_registered_models():
        versions = c.search_model_versions(_name_filter(rm.name))
        latest = max((int(v.version) for v in versions), default=None)
        aliases = rm.aliases if isinstance(rm.aliases, dict) else {}
        out.append(
            ModelSummary(
                name=rm.name,
                latest_version=str(latest) if latest is not None else None,
                num_versions=len(versions),
                aliases={k: str(v) for k, v in aliases.items()},
                updated=_when(rm.last_updated_timestamp),
                description=rm.description or "",
            )
        )
    return sorted(out, key=lambda m: m.name)


def download(ref: str, dst: str | Path, *, uri: str | None = None) -> Path:
    """Download the files of ``ref`` (``NAME@ALIAS``, ``NAME/VERSION``, ``models:/...``) into
    the folder ``dst``, atomically: a failed download leaves no partial ``dst``.

    Raises:
        RegistryError: the reference does not resolve.
        FileExistsError: ``dst`` exists and is not empty.
    """
    name, alias, version = parse_ref(ref)
    info = get_version(name, alias=alias, version=version, uri=uri)
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: exists and is not an empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(uri)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri(name, version=info.version),
            dst_path=str(staging),
            tracking_uri=uri,
            registry_uri=uri,
        )
        if dst.exists():
            dst.rmdir()
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst
