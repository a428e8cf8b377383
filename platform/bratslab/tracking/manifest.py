"""``SHA256SUMS`` in a local model folder: the sha256 of its files, checked before loading.

A folder has no registry to hold its hashes, so it carries them: ``SHA256SUMS`` in the
``sha256sum`` format (``<hex>  <relative path>`` per line, so ``sha256sum -c SHA256SUMS``
checks it too), written by ``bratslab models download`` next to the files it verified.
:func:`verify_local_dir` runs on every local folder a model is loaded from
(:func:`bratslab.tracking.model_store.fetch_model_dir`): with a manifest, every file it lists
must exist and match; without one (a training checkpoint, a hand-made folder) the folder is
the user's own files and is loaded as is, the log saying it is unverified. An ensemble folder
is always checked against the hashes its ``ensemble.json`` lists for each member.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from bratslab.tracking.model_folder import (
    ModelIntegrityError,
    is_ensemble_dir,
    model_files,
    sha256_file,
    verify_model_dir,
)

log = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
_LINE = re.compile(r"([0-9a-f]{64}) [ *](\S.*)")


def write_manifest(folder: str | Path, extra: Sequence[str] = ()) -> Path:
    """Write ``folder/SHA256SUMS`` for the model files of ``folder`` (model.pt + model.json, or
    an ensemble's files) and the ``extra`` files beside them; returns its path."""
    folder = Path(folder)
    files = [*model_files(folder), *extra]
    lines = [f"{sha256_file(folder / rel)}  {rel}\n" for rel in files]
    path = folder / MANIFEST
    path.write_text("".join(lines))
    return path


def read_manifest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``folder/SHA256SUMS``.

    Raises:
        ValueError: a line that is not ``<64 hex>  <path>``, or a path leaving the folder.
    """
    path = folder / MANIFEST
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.strip())
        rel = m.group(2) if m else ""
        if not m or rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"{path}:{n}: expected '<sha256>  <file in this folder>'")
        out[rel] = m.group(1)
    return out


def verify_local_dir(folder: Path) -> bool:
    """Check a local model folder against its ``SHA256SUMS`` (when it has one) and an
    ensemble's members against ``ensemble.json``.

    Returns:
        True when a manifest was checked, False when there is none (logged as unverified).
    Raises:
        ModelIntegrityError: a file differs from its listed sha256 (naming it and both hashes).
        FileNotFoundError: a listed file is missing.
        ValueError: a malformed manifest.
    """
    folder = Path(folder)
    if is_ensemble_dir(folder):
        verify_model_dir(folder, {}, str(folder))  # members vs ensemble.json
    if not (folder / MANIFEST).is_file():
        log.info("%s: no %s; loading its files unverified", folder, MANIFEST)
        return False
    for rel, want in read_manifest(folder).items():
        path = folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {folder / MANIFEST} but missing")
        got = sha256_file(path)
        if got != want:
            raise ModelIntegrityError(f"{folder} ({MANIFEST})", str(path), want, got)
    return True
