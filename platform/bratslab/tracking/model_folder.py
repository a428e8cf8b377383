"""A model folder on disk: a weights-only model directory or an ensemble folder, its files'
sha256 and their checks (no MLflow).

A model directory (:func:`bratslab.models.weights.save_model_dir`) holds ``model.pt`` (a state
dict, loaded with ``torch.load(weights_only=True)``) and ``model.json`` (architecture config,
preprocessing config, patch size, store fingerprint). An *ensemble* (cross-validation folds, or
any compatible models) is one folder too::

    ensemble.json              {"format", "combine": "mean-probabilities", "members": [
                                 {"name", "path": "members/<name>", "source", "files":
                                  {"model.pt": sha256, "model.json": sha256}}, ...]}
    members/<name>/model.pt    one model directory per member
    members/<name>/model.json

Every file of a logged or registered model gets a sha256 tag (:func:`hash_tag`), and
:func:`verify_model_dir` checks a folder against them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_FILES = ("model.pt", "model.json")  # bratslab.models.weights' WEIGHTS_FILE, INFO_FILE


# Version tags holding each file's sha256, set at registration, checked on every fetch.
HASH_TAGS = {"model.pt": "bratslab.sha256.model_pt", "model.json": "bratslab.sha256.model_json"}


HASH_PREFIX = "bratslab.sha256."
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "bratslab-ensemble/1"
MEMBER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # members/<name>: one plain folder
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds ``model.pt`` and ``model.json``."""
    p = Path(path)
    return all((p / f).is_file() for f in MODEL_FILES)


def is_ensemble_dir(path: str | Path) -> bool:
    """True when ``path`` holds an ``ensemble.json`` (see the module docstring)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def is_model_root(path: str | Path) -> bool:
    """A model directory or an ensemble folder."""
    return is_model_dir(path) or is_ensemble_dir(path)


def hash_tag(relpath: str) -> str:
    """The version tag holding the sha256 of the file ``relpath`` of a model folder:
    ``model.pt`` → ``bratslab.sha256.model_pt``, ``members/fold0/model.pt`` →
    ``bratslab.sha256.members.fold0.model_pt`` (MLflow tag keys allow ``.`` but not every
    character a path may hold)."""
    return HASH_PREFIX + relpath.replace(".", "_").replace("/", ".")


def read_ensemble(folder: str | Path) -> dict:
    """The validated ``ensemble.json`` of ``folder``.

    Raises:
        ValueError: not JSON, another format, no members, a member name that is not one plain
            folder name, or a duplicate; naming the file.
        FileNotFoundError: a member's model directory is missing.
    """
    path = Path(folder) / ENSEMBLE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable ensemble description ({e})") from None
    if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{path}: format is not {ENSEMBLE_FORMAT!r}")
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}: no members")
    names = [m.get("name") if isinstance(m, dict) else None for m in members]
    for name in names:
        if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
            raise ValueError(f"{path}: member name {name!r} is not a plain folder name")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate member names {names}")
    for name in names:
        if not is_model_dir(Path(folder) / member_path(name)):
            raise FileNotFoundError(not_a_model_dir(Path(folder) / member_path(name)))
    return data


def member_path(name: str) -> str:
    """Where member ``name`` lives inside an ensemble folder."""
    return f"members/{name}"


def model_files(folder: str | Path) -> list[str]:
    """The files that make up the model in ``folder``, relative to it: ``model.pt`` and
    ``model.json``, or for an ensemble ``ensemble.json`` and each member's two files."""
    if not is_ensemble_dir(folder):
        return list(MODEL_FILES)
    names = [m["name"] for m in read_ensemble(folder)["members"]]
    return [ENSEMBLE_FILE] + [f"{member_path(n)}/{f}" for n in names for f in MODEL_FILES]


def copy_model_files(src: Path, dst: Path, move: bool = False) -> None:
    """Copy (or move) the files of the model in ``src`` (:func:`model_files`) into ``dst``."""
    for rel in model_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(src / rel, dst / rel)
        else:
            shutil.copy2(src / rel, dst / rel)


def write_ensemble_dir(
    out: str | Path, members: list[tuple[str, Path, str]], extra: dict | None = None
) -> Path:
    """Assemble an ensemble folder at ``out`` (created; must not exist).

    Args:
        members: ``(name, model directory, source)`` per member; ``name`` becomes
            ``members/<name>`` (letters a-z, digits, ``_``, ``-``), ``source`` is recorded.
        extra: more keys for ``ensemble.json`` (e.g. the CV parent run, the training store).
    Raises:
        ValueError: a bad or duplicate member name, or fewer than two members.
        FileNotFoundError: a member is not a model directory.
    """
    out = Path(out)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    listed = []
    for name, src, source in members:
        if not MEMBER_NAME.fullmatch(name):
            raise ValueError(f"ensemble member name {name!r} is not a plain folder name")
        if not is_model_dir(src):
            raise FileNotFoundError(not_a_model_dir(Path(src)))
        dst = out / member_path(name)
        dst.mkdir(parents=True)  # a duplicate name fails here
        files = {}
        for f in MODEL_FILES:
            shutil.copy2(Path(src) / f, dst / f)
            files[f] = sha256_file(dst / f)
        listed.append({"name": name, "path": member_path(name), "source": source, "files": files})
    data = {
        **(extra or {}),
        "format": ENSEMBLE_FORMAT,
        "combine": "mean-probabilities",
        "members": listed,
    }
    (out / ENSEMBLE_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    read_ensemble(out)  # the folder as written must read back
    return out


def model_id_of(model_uri: str) -> str | None:
    """``models:/m-abc`` → ``m-abc``; None for other URIs."""
    rest = model_uri.removeprefix("models:/")
    if rest == model_uri or "/" in rest or "@" in rest:
        return None
    return rest


# A registry reference written without its scheme: NAME@ALIAS or NAME/VERSION.
BARE_REF = re.compile(r"[^/:@\s]+(@[\w.-]+|/\d+)")
BARE_NAME = re.compile(r"[^/:@\s]+")
_hinted: set[str] = set()


def canonical_ref(text: str, *, bare_name: bool = False) -> str:
    """The documented way to name a registered model, ``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``, for a reference written without ``models:/`` (``NAME@ALIAS``,
    ``NAME/VERSION``, and with ``bare_name`` a plain ``NAME``, meaning its champion).

    Such a reference is accepted with a one-line hint (a warning, once per process and
    reference) naming the form to write; a path that exists, and anything else, is returned as
    given.
    """
    if Path(text).expanduser().exists():
        return text
    if BARE_REF.fullmatch(text):
        canonical = f"models:/{text}"
    elif bare_name and BARE_NAME.fullmatch(text):
        canonical = f"models:/{text}@champion"
    else:
        return text
    if text not in _hinted:
        _hinted.add(text)
        log.warning("%r read as %s: write registered models that way", text, canonical)
    return canonical


def not_a_model_dir(path: Path) -> str:
    return f"{path}: not a model directory (needs {' and '.join(MODEL_FILES)})"


class ModelIntegrityError(ValueError):
    """A model file does not match the sha256 recorded when it was logged or registered (or
    listed in its folder's ``SHA256SUMS``)."""

    def __init__(self, ref: str, file: str, expected: str, actual: str):
        super().__init__(
            f"{ref}: {file} does not match the sha256 recorded for it (expected {expected}, "
            f"got {actual}); it was changed after it was recorded, refusing it"
        )
        self.file, self.expected, self.actual = file, expected, actual


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def model_hashes(model_dir: str | Path) -> dict[str, str]:
    """``{version tag: sha256}`` of every file of a model directory (see :data:`HASH_TAGS`) or
    of an ensemble folder (:func:`model_files`, tags by :func:`hash_tag`)."""
    return {hash_tag(f): sha256_file(Path(model_dir) / f) for f in model_files(model_dir)}


def hash_tags_of(tags: dict[str, str]) -> dict[str, str]:
    """The sha256 tags among a version's tags."""
    return {k: v for k, v in tags.items() if k.startswith(HASH_PREFIX)}


def verify_model_dir(model_dir: Path, expected: dict[str, str], ref: str) -> dict[str, str]:
    """Check ``model_dir`` against ``expected`` (version tags; files without a tag are not
    checked, a tag without its file is an error). An ensemble's member files are also checked
    against the hashes its ``ensemble.json`` lists.

    Returns:
        The actual hashes, keyed by :func:`hash_tag`.
    Raises:
        ModelIntegrityError: a file's sha256 differs from its tag (or its listing), naming the
            file and both hashes.
        FileNotFoundError: a file the version was registered with is not there.
    """
    model_dir = Path(model_dir)
    expected = hash_tags_of(expected)
    if HASH_TAGS["model.pt"] in expected and is_ensemble_dir(model_dir):
        raise FileNotFoundError(
            f"{ref}: registered as a single model, but {model_dir} holds an ensemble"
        )
    actual = model_hashes(model_dir)
    files = {hash_tag(f): f for f in model_files(model_dir)}
    for tag, want in sorted(expected.items()):
        if tag not in actual:
            raise FileNotFoundError(
                f"{ref}: {model_dir} lacks a file registered with this version (tag {tag})"
            )
        if want != actual[tag]:
            raise ModelIntegrityError(ref, str(model_dir / files[tag]), want, actual[tag])
    if is_ensemble_dir(model_dir):
        for m in read_ensemble(model_dir)["members"]:
            for f, want in (m.get("files") or {}).items():
                rel = f"{member_path(m['name'])}/{f}"
                got = actual.get(hash_tag(rel))
                if got is not None and want != got:
                    raise ModelIntegrityError(ref, str(model_dir / rel), want, got)
    return actual


def find_model_dir(root: Path, ref: str) -> Path:
    """The single model directory (or ensemble folder) inside a download (a pyfunc keeps it
    under artifacts/)."""
    ensembles = sorted(p.parent for p in root.rglob(ENSEMBLE_FILE))
    if ensembles:
        if len(ensembles) != 1:
            raise FileNotFoundError(
                f"{ref}: expected one ensemble folder in the download, found {len(ensembles)}"
            )
        return ensembles[0]
    found = sorted(p.parent for p in root.rglob("model.json") if is_model_dir(p.parent))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{ref}: expected one model directory in the download, found {len(found)}"
        )
    return found[0]
