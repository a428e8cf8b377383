"""Registering a logged model as a new version, its files' sha256 as version tags.

Every version registered here carries the sha256 of its ``model.pt`` and ``model.json`` as
version tags (:data:`bratslab.tracking.model_folder.HASH_TAGS`), computed from the files as
stored; :func:`bratslab.tracking.model_store.fetch_model_dir` refuses files that no longer match.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from bratslab.tracking.logged_hashes import logged_hashes
from bratslab.tracking.mlflow_runs import client, download_artifacts, global_uris, tracking_uri
from bratslab.tracking.model_folder import (
    find_model_dir,
    is_model_dir,
    model_hashes,
)
from bratslab.tracking.model_folder import verify_model_dir as _verify
from bratslab.tracking.model_versions import (
    RegistryError,
    check_model_name,
    logged_model_id,
    logged_model_of_run,
)
from bratslab.tracking.promotion import set_alias
from bratslab.tracking.run_ids import is_run_ref, resolve_run_id

log = logging.getLogger(__name__)


def register(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    uri: str | None = None,
    await_s: int = 300,
    description: str | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created if needed), with
    ``description`` (what the version is, in words) when given.

    Args:
        model_uri: ``models:/<model_id>`` or ``runs:/<run_id>/<artifact>``.
        name: Registered model name, e.g. ``bratslab-ssa``.
        tags: Version tags; values are stored as strings (metrics like ``tta/dice_mean`` as
            their repr, so :func:`promote_if_better` can compare them).
    The sha256 of the model directory's ``model.pt`` and ``model.json`` (downloaded from the
    store, so what is hashed is what was stored) become version tags too.

    Returns:
        The new version number, as a string (MLflow's type for versions).
    """
    check_model_name(name)
    uri = tracking_uri(uri)
    str_tags = {k: _tag_value(v) for k, v in (tags or {}).items()}
    str_tags.update(source_hashes(model_uri, uri=uri))
    # MLflow resolves ``models:/<model_id>`` sources through its *global* tracking URI.
    with global_uris(uri):
        mv = mlflow.register_model(model_uri, name, await_registration_for=await_s, tags=str_tags)
    if description:
        client(uri).update_model_version(name, mv.version, description=description)
    log.info("registered %s as %s version %s", model_uri, name, mv.version)
    return str(mv.version)


def source_hashes(model_uri: str, *, uri: str | None = None) -> dict[str, str]:
    """``{hash tag: sha256}`` of the model directory stored under ``model_uri``; empty (with a
    warning) when the source holds no bratslab model directory (a foreign MLflow model).

    A logged model's files are first checked against the sha256 tags it was logged with, so
    files changed in the artifact store between logging and registering are refused
    (:class:`~bratslab.tracking.model_store.ModelIntegrityError`) rather than registered."""
    model_id = logged_model_id(model_uri)
    logged = logged_hashes(model_id, uri=uri, ref=model_uri) if model_id else {}
    with tempfile.TemporaryDirectory(prefix="bratslab-hash-") as tmp:
        local = download_artifacts(model_uri, tmp, uri)
        if not any(is_model_dir(p.parent) for p in local.rglob("model.json")):
            log.warning("%s holds no model.pt + model.json: registered without hashes", model_uri)
            return {}
        found = find_model_dir(local, model_uri)
        if logged:
            _verify(found, logged, model_uri)
        return model_hashes(found)


def _tag_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def run_model(ref: str, *, uri: str | None = None) -> str:
    """``models:/<model_id>`` of the model logged by the run ``ref`` names: a full run id or a
    unique prefix of one (tables show 8 characters).

    Raises:
        RegistryError: no run, several runs, or no finished logged model.
    """
    try:
        run_id = resolve_run_id(ref, uri=uri)
    except LookupError as e:
        raise RegistryError(str(e)) from None
    return logged_model_of_run(run_id, uri=uri)


def register_logged_model(
    ref: str,
    name: str,
    alias: str | None = None,
    *,
    uri: str | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """Register a run's logged model (``ref``: a run id, or a unique prefix of one) or a logged
    model itself (``models:/<model_id>``) as a new version of ``name``; optionally point
    ``alias`` at it (through :func:`set_alias`'s guard, without comparing;
    ``promote_if_better`` compares).

    Returns:
        ``(version, model_uri)``.
    Raises:
        RegistryError: the run or logged model does not exist, or the run logged no model.
        ValueError: ``ref`` is neither a run id nor ``models:/<model_id>``.
        AliasRefusedError: the new version (registered) has no finite selection metric.
    """
    check_model_name(name)
    ref = ref.strip()
    if is_run_ref(ref):
        source = run_model(ref, uri=uri)
    elif (model_id := logged_model_id(ref)) is not None:
        try:
            client(uri).get_logged_model(model_id)
        except MlflowException:
            raise RegistryError(f"no logged model {model_id!r} in {tracking_uri(uri)}") from None
        source = ref
    else:
        raise ValueError(
            f"{ref!r}: expected a run id (32 hex digits or a unique prefix) or models:/<model_id>"
        )
    version = register(source, name, uri=uri)
    if alias:
        set_alias(name, version, alias, uri=uri, force=force)
    return version, source
