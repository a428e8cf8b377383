"""Registered model versions, read: references, lookups, listings (no writes but the name check).

``NAME@ALIAS`` / ``NAME/VERSION`` references (:func:`parse_ref`), a version with its metrics,
params and tags (:func:`get_version`), every version or model (:func:`list_versions`,
:func:`list_models`), the run behind a model (:func:`source_run_id`) and the model a run logged
(:func:`logged_model_of_run`). Writes live in :mod:`~bratslab.tracking.registration`,
:mod:`~bratslab.tracking.ensemble_registration` and :mod:`~bratslab.tracking.promotion`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from bratslab.tracking.mlflow_runs import client, tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANDIDATE_TAG = "bratslab.promote."  # + alias: {"t": time, "metric", "mode"} of a promotion


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


def check_model_name(name: str) -> str:
    """``name`` if it can be a registered model name here, before any work is done.

    MLflow refuses ``/`` and ``:`` and empty names; ``@`` is refused too, since
    ``models:/NAME@ALIAS`` could not name it; surrounding spaces are refused as a likely typo.

    Raises:
        ValueError: naming the name and the rule (the CLI exits 2).
    """
    if not name or name != name.strip() or any(c in name for c in "/:@"):
        raise ValueError(
            f"invalid registered model name {name!r}: must be non-empty, without surrounding "
            "spaces, and without '/', ':' or '@'"
        )
    return name


def logged_model_of_run(run_id: str, *, uri: str | None = None) -> str:
    """``models:/<model_id>`` of the model a run logged (a train run logs its best checkpoint).

    A resumed run can have logged several: the newest READY one is taken (one still PENDING
    or FAILED never finished uploading).

    Raises:
        RegistryError: no such run, or the run logged no finished model.
    """
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"no run {run_id!r} in {tracking_uri(uri)}") from None
    models = c.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if not ready:
        raise RegistryError(
            f"run {run_id} ({run.info.run_name}) has no logged model"
            + (f" that finished logging ({len(models)} pending or failed)" if models else "")
            + "; training logs one when tracking.log_model is true"
        )
    newest = max(ready, key=lambda m: m.creation_timestamp or 0)
    return f"models:/{newest.model_id}"


def name_filter(name: str) -> str:
    escaped = name.replace("'", "\\'")
    return f"name='{escaped}'"


def _numeric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith(("bratslab.sha256.", CANDIDATE_TAG)):  # bookkeeping, not metrics
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def logged_model_id(source: str | None) -> str | None:
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
        model_id=getattr(mv, "model_id", None) or logged_model_id(mv.source),
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
    model_id = logged_model_id(model_uri)
    if model_id is not None:
        try:
            return client(uri).get_logged_model(model_id).source_run_id
        except MlflowException as e:
            raise RegistryError(f"{model_uri}: {e.message}") from None
    name, alias, version = parse_ref(model_uri)
    return get_version(name, alias=alias, version=version, uri=uri).run_id


def list_versions(name: str, *, uri: str | None = None) -> list[VersionInfo]:
    """All versions of ``name``, newest first, each with the aliases pointing at it."""
    c = client(uri)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {tracking_uri(uri)}") from None
    # Search results carry no aliases (MLflow 3.17 SQL store); the registered model has them all.
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases if isinstance(model.aliases, dict) else {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(
        c.search_model_versions(name_filter(name)), key=lambda v: int(v.version), reverse=True
    )
    infos = [_describe(v, uri=uri) for v in versions]
    for info in infos:
        info.aliases = sorted(set(info.aliases) | set(by_version.get(info.version, [])))
    return infos


def list_models(*, uri: str | None = None) -> list[ModelSummary]:
    """Every registered model with its latest version and aliases, sorted by name."""
    c = client(uri)
    out = []
    for rm in c.search_registered_models():
        versions = c.search_model_versions(name_filter(rm.name))
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
