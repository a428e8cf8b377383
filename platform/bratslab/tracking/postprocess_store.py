"""Post-processing thresholds on the model registry: a version carries its own.

``bratslab postprocess fit`` stores the fitted thresholds on the registered version it
evaluated: the JSON as version tag :data:`POSTPROCESS_TAG` (what ``bratslab predict`` reads)
plus the fit's summary as :data:`FIT_TAG`, and the whole ``postprocess.json`` as an artifact of
the version's source run (under :data:`ARTIFACT_DIR`). Only registered versions
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``) carry thresholds: a local checkpoint, a
``runs:/`` URI or a bare logged model (``models:/m-...``) has none.

Values here are plain JSON data; :mod:`bratslab.postprocess.config` validates them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bratslab.tracking import mlflow_runs, registry
from bratslab.tracking.model_folder import canonical_ref, model_id_of

log = logging.getLogger(__name__)

POSTPROCESS_TAG = "bratslab.postprocess"
FIT_TAG = "bratslab.postprocess.fit"
ARTIFACT_DIR = "postprocess"
MAX_TAG_CHARS = 5000  # MLflow's limit on a model version tag value


@dataclass(frozen=True)
class RegisteredVersion:
    """A resolved registered version: name, version number and its source run (if any)."""

    name: str
    version: str
    run_id: str | None
    tags: Mapping[str, str]


def registered_version(ref: str, *, uri: str | None = None) -> RegisteredVersion | None:
    """The registered version ``ref`` names (an alias resolved now), or None when ``ref`` is
    not a registry reference (a local folder, ``runs:/``, a logged model ``models:/m-...``).

    Raises:
        registry.RegistryError: a registry reference that does not resolve.
    """
    text = canonical_ref(str(ref))
    if not text.startswith("models:/") or (model_id_of(text) or "").startswith("m-"):
        return None
    name, alias, version = registry.parse_ref(text)
    info = registry.get_version(name, alias=alias, version=version, uri=uri)
    return RegisteredVersion(info.name, info.version, info.run_id, dict(info.tags))


def read_thresholds(ref: str, *, uri: str | None = None) -> dict[str, Any] | None:
    """The thresholds (parsed JSON) the registered version ``ref`` carries, or None when it
    carries none or ``ref`` is not a registered version.

    Raises:
        ValueError: the tag holds something that is not a JSON object (names the version).
        registry.RegistryError: a registry reference that does not resolve.
    """
    version = registered_version(ref, uri=uri)
    if version is None or POSTPROCESS_TAG not in version.tags:
        return None
    text = version.tags[POSTPROCESS_TAG]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{version.name} version {version.version}: tag {POSTPROCESS_TAG} is not JSON: {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{version.name} version {version.version}: tag {POSTPROCESS_TAG} is not an object"
        )
    return data


def save_thresholds(
    ref: str,
    thresholds: Mapping[str, Any],
    fit_summary: Mapping[str, Any],
    json_file: str | Path,
    *,
    uri: str | None = None,
) -> RegisteredVersion:
    """Tag the registered version ``ref`` with ``thresholds`` (and the fit's summary) and log
    ``json_file`` as an artifact of its source run (skipped with a warning when it has none).

    Raises:
        ValueError: ``ref`` is not a registered version.
        registry.RegistryError: ``ref`` does not resolve.
    """
    version = registered_version(ref, uri=uri)
    if version is None:
        raise ValueError(f"{ref}: not a registered model version (models:/NAME/VERSION or @ALIAS)")
    c = mlflow_runs.client(uri)
    c.set_model_version_tag(version.name, version.version, POSTPROCESS_TAG, _compact(thresholds))
    summary = _compact(fit_summary)
    if len(summary) <= MAX_TAG_CHARS:
        c.set_model_version_tag(version.name, version.version, FIT_TAG, summary)
    if version.run_id:
        mlflow_runs.log_artifact(version.run_id, json_file, ARTIFACT_DIR, uri)
    else:
        log.warning("%s v%s: no run, %s not logged", version.name, version.version, json_file)
    log.info("%s v%s: post-processing %s", version.name, version.version, _compact(thresholds))
    return version


def _compact(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"))


__all__ = [
    "ARTIFACT_DIR",
    "FIT_TAG",
    "POSTPROCESS_TAG",
    "RegisteredVersion",
    "read_thresholds",
    "registered_version",
    "save_thresholds",
]
