"""``bratslab models download``: a registered version as a self-contained model folder.

The folder holds everything ``bratslab predict --model FOLDER`` needs to behave exactly like
``--model models:/NAME@ALIAS``, and nothing machine-local::

    model.pt          weights-only state dict
    model.json        architecture, preprocessing (the training store's settings), patch size
    postprocess.json  the thresholds ``bratslab postprocess fit`` stored on the version, if any
    version.json      where it came from: name, version, aliases, source run, metrics
    SHA256SUMS        sha256 of every file above (``sha256sum -c SHA256SUMS`` checks it too)

Files are checked against the version's sha256 tags before anything is written; the folder is
built beside ``dst`` and renamed into place, so a failed download leaves nothing behind. A
version that holds no bratslab model folder (a foreign MLflow model) is downloaded as stored.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from bratslab.tracking import registry
from bratslab.tracking.manifest import write_manifest
from bratslab.tracking.mlflow_runs import download_artifacts, tracking_uri
from bratslab.tracking.model_folder import (
    canonical_ref,
    find_model_dir,
    hash_tags_of,
    verify_model_dir,
)
from bratslab.tracking.postprocess_store import POSTPROCESS_TAG

log = logging.getLogger(__name__)

POSTPROCESS_FILE = "postprocess.json"
VERSION_FILE = "version.json"


def version_document(info: registry.VersionInfo) -> dict:
    """What ``version.json`` holds: the version's identity and metrics (its source run's, and
    metric tags such as ``tta/dice_mean``)."""
    metrics = dict(info.metrics)
    for key, value in info.tags.items():
        if "/" in key:  # metric keys are namespaced (tta/..., pp/...); hashes and ids are not
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
    return {
        "name": info.name,
        "version": str(info.version),
        "aliases": sorted(info.aliases),
        "run_id": info.run_id,
        "model_id": info.model_id,
        "metrics": dict(sorted(metrics.items())),
    }


def _assemble(found: Path, info: registry.VersionInfo) -> list[str]:
    """Add the version's post-processing and identity to the model folder ``found``; returns
    the names of the files added."""
    added = []
    thresholds = info.tags.get(POSTPROCESS_TAG)
    if thresholds:
        doc = {"config": json.loads(thresholds), "source": f"{info.name} version {info.version}"}
        (found / POSTPROCESS_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        added.append(POSTPROCESS_FILE)
    (found / VERSION_FILE).write_text(json.dumps(version_document(info), indent=2) + "\n")
    added.append(VERSION_FILE)
    return added


def download(ref: str, dst: str | Path, *, uri: str | None = None) -> Path:
    """Download the registered version ``ref`` (``models:/NAME@ALIAS``, ``models:/NAME/V``;
    ``NAME@ALIAS``, ``NAME/V`` and ``NAME`` with a hint) into the new folder ``dst`` (see the
    module docstring).

    Raises:
        registry.RegistryError: the reference does not resolve.
        ModelIntegrityError: a file does not match its registered sha256 (``dst`` not made).
        FileExistsError: ``dst`` exists and is not an empty folder.
        FileNotFoundError: the version's hashes name a model folder the download lacks.
    """
    name, alias, version = registry.parse_ref(canonical_ref(ref, bare_name=True))
    info = registry.get_version(name, alias=alias, version=version, uri=uri)
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: exists and is not an empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(uri)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        local = download_artifacts(registry.model_uri(name, version=info.version), staging, uri)
        expected = hash_tags_of(info.tags)
        try:
            folder = find_model_dir(local, ref)
        except FileNotFoundError:
            if expected:  # hashes were recorded for a model folder that is not there
                raise
            log.warning("%s holds no bratslab model folder: downloaded as stored", ref)
            folder = local
        else:
            if expected:
                verify_model_dir(folder, expected, ref)
            else:
                log.warning("%s: no sha256 recorded at registration; files not verified", ref)
            write_manifest(folder, extra=_assemble(folder, info))
        if dst.exists():
            dst.rmdir()
        folder.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst
