"""Models in MLflow: log a weights-only model directory, fetch one back from any reference.

Format: a pyfunc *model from code*
(:mod:`bratslab.inference.pyfunc_model`) whose artifact is the model directory written by
:func:`bratslab.models.weights.save_model_dir` — ``model.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and ``model.json`` (architecture config, preprocessing
config, patch size, store fingerprint). Nothing is pickled, any volume size is accepted, and the
model is registrable like any MLflow 3 logged model (``models:/<model_id>``).

An *ensemble* (cross-validation folds, or any compatible models) is one folder too::

    ensemble.json              {"format", "combine": "mean-probabilities", "members": [
                                 {"name", "path": "members/<name>", "source", "files":
                                  {"model.pt": sha256, "model.json": sha256}}, ...]}
    members/<name>/model.pt    one model directory per member
    members/<name>/model.json

logged and registered like a single model (:func:`log_ensemble_dir`); every file of it gets a
sha256 version tag at registration (:func:`hash_tag`), and fetching verifies all of them.

:func:`fetch_model_dir` is the one resolver of model references (local folder or MLflow URI) for
every stage. MLflow is imported only when a reference actually needs it, so resolving a local
checkpoint folder (``bratslab predict --model ckpt/``) stays fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

from bratslab.settings import get_settings

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

# The pyfunc source MLflow stores with every logged model. A file path, not an import: it runs
# models, so it lives in the inference layer above this one.
PYFUNC_CODE = Path(__file__).parents[1] / "inference" / "pyfunc_model.py"
MODEL_FILES = ("model.pt", "model.json")  # bratslab.models.weights' WEIGHTS_FILE, INFO_FILE
# Version tags holding each file's sha256, set at registration, checked on every fetch.
HASH_TAGS = {"model.pt": "bratslab.sha256.model_pt", "model.json": "bratslab.sha256.model_json"}
HASH_PREFIX = "bratslab.sha256."
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "bratslab-ensemble/1"
MEMBER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # members/<name>: one plain folder
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id
CACHE_KEY_CHARS = 16  # cache folder name: this many hex digits of model.pt's (ensemble.json's)
_FLUENT_LOCK = threading.Lock()  # log_model needs MLflow's process-global active run


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
            raise FileNotFoundError(_not_a_model_dir(Path(folder) / member_path(name)))
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


def log_model_dir(
    model_dir: str | Path,
    *,
    run_id: str,
    name: str = "model",
    uri: str | None = None,
) -> str:
    """Log ``model_dir`` (model.pt + model.json, other files ignored; or an ensemble folder,
    :func:`write_ensemble_dir`) as a pyfunc model of run ``run_id``; returns its URI
    ``models:/<model_id>`` (register it with the registry module). The logged model carries
    the sha256 of every file as tags (:func:`hash_tag`), checked on every fetch.
    """
    import mlflow

    from bratslab.tracking.mlflow_runs import global_uris, tracking_uri

    model_dir = Path(model_dir)
    if not is_model_root(model_dir):
        raise FileNotFoundError(_not_a_model_dir(model_dir))
    uri = tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="bratslab-model-") as tmp:
        # Only the weights and config travel: a checkpoint dir also holds optimizer state.
        staged = Path(tmp) / "model_dir"
        _copy_model_files(model_dir, staged)
        from bratslab.tracking.manifest import write_manifest  # (imports this module)

        hashes = model_hashes(staged)
        write_manifest(staged)  # checked by the pyfunc when MLflow itself loads the model
        with (
            _FLUENT_LOCK,
            global_uris(uri),
            warnings.catch_warnings(),
            mlflow.start_run(run_id=run_id, log_system_metrics=False),
        ):
            warnings.simplefilter("ignore", UserWarning)  # "add type hints" nag
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(PYFUNC_CODE),
                artifacts={"model_dir": str(staged)},
                pip_requirements=["bratslab", "torch", "monai"],
                # The sha256 of every file as logged: every later fetch of this logged model
                # (models:/<model_id>, runs:/..., a run id, a registration) checks them.
                tags=hashes,
            )
    log.info("logged model %s (run %s)", info.model_uri, run_id)
    return info.model_uri


def _copy_model_files(src: Path, dst: Path, move: bool = False) -> None:
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
            raise FileNotFoundError(_not_a_model_dir(Path(src)))
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


def _not_a_model_dir(path: Path) -> str:
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


def fetch_model_dir(ref: str | Path, *, uri: str | None = None, cache: Path | None = None) -> Path:
    """A local model directory for ``ref``.

    ``ref`` is a local folder holding model.pt + model.json (returned as is, without importing
    MLflow; checked against its ``SHA256SUMS`` when it has one, see
    :mod:`bratslab.tracking.manifest`), an MLflow model URI: ``runs:/<run_id>/<name>``,
    ``models:/NAME@alias``, ``models:/NAME/VERSION`` or ``models:/<model_id>``, or a run id
    (the newest model that run logged).

    Every remote model is checked against sha256 values recorded when it was made: a
    registered version's version tags, a logged model's (``models:/<model_id>``, a
    ``runs:/`` URI or a run id) tags set when it was logged. A model with none recorded (logged
    by an older bratslab) is used with a warning.

    Remote models land in a content-addressed cache, ``$BRATSLAB_HOME/cache/models/<first 16
    hex digits of model.pt's sha256>/`` (model.pt + model.json only). A registered version's
    files are checked against the sha256 tags set when it was registered, both on download and
    when the cache already holds them (then nothing is downloaded); an alias is resolved to its
    version first, so a moved alias fetches the new version. The cache is filled atomically: a
    download goes to a temp folder beside it and is renamed into place; when another process
    wins that rename, its (verified) folder is used.

    Raises:
        FileNotFoundError: a local path that is not a model directory, or a URI that cannot be
            downloaded or holds no single model directory.
        ModelIntegrityError: a downloaded or cached file does not match its registered sha256.
        ValueError: a URI of another scheme (``s3://``, ``file:/``...).
    """
    from bratslab.tracking.manifest import verify_local_dir

    text = str(ref)
    path = Path(text).expanduser()
    if is_model_root(path):  # a local folder, even one whose name happens to contain ":/"
        verify_local_dir(path)
        return path
    label = text  # what errors name: the reference as given
    if RUN_ID.fullmatch(text):
        from bratslab.tracking.logged_hashes import logged_model_of_run

        text = logged_model_of_run(text, uri)
        label = f"{label} ({text})"
    elif "://" not in text and ":/" not in text:
        raise FileNotFoundError(_not_a_model_dir(path))
    if not text.startswith(("runs:/", "models:/")):
        raise ValueError(f"{text}: expected a model directory, runs:/... or models:/... URI")
    root = cache or get_settings().home / "cache" / "models"
    root.mkdir(parents=True, exist_ok=True)
    source, expected = _resolve_version(text, uri)
    if expected:
        hit = _cached(root, expected, label)
        if hit is not None:
            return hit
    else:
        log.warning("%s: no sha256 recorded when it was logged; files not verified", label)
    return _download_into_cache(label, source, expected, root, uri)


def _resolve_version(text: str, uri: str | None) -> tuple[str, dict[str, str]]:
    """``(URI to download, expected hash tags)``: a registered version by number (an alias
    resolved now) and its version's hash tags; a logged model (``models:/<model_id>``, or the
    one a ``runs:/<run_id>/<name>`` URI names) and the hash tags it was logged with."""
    from bratslab.tracking import registry
    from bratslab.tracking.logged_hashes import logged_hashes, logged_model_of_runs_uri

    model_id = model_id_of(text)
    if text.startswith("runs:/"):
        model_id = logged_model_of_runs_uri(text, uri)
        if model_id is None:
            return text, {}
    if model_id is not None:
        return f"models:/{model_id}", logged_hashes(model_id, uri=uri, ref=text)
    try:
        name, alias, version = registry.parse_ref(text)
        info = registry.get_version(name, alias=alias, version=version, uri=uri)
    except registry.RegistryError as e:
        raise FileNotFoundError(f"{text}: cannot download model: {e}") from None
    return registry.model_uri(name, version=info.version), hash_tags_of(info.tags)


def _cache_key(hashes: dict[str, str]) -> str | None:
    """The cache folder name: model.pt's sha256 (ensemble.json's for an ensemble), shortened."""
    want = hashes.get(HASH_TAGS["model.pt"]) or hashes.get(hash_tag(ENSEMBLE_FILE))
    return want[:CACHE_KEY_CHARS] if want else None


def _cached(root: Path, expected: dict[str, str], ref: str) -> Path | None:
    """The verified cache folder for ``expected`` hashes, or None when it is not there."""
    key = _cache_key(expected)
    folder = root / key if key else None
    if folder is None or not is_model_root(folder):
        return None
    try:
        verify_model_dir(folder, expected, f"{ref} (cached in {folder})")
    except (ModelIntegrityError, FileNotFoundError, ValueError) as e:  # damaged: drop it
        log.warning("%s; downloading again", e)
        _discard(folder)
        return None
    return folder


def _discard(folder: Path) -> None:
    """Remove a cache folder; renamed away first so no reader sees it half-deleted."""
    doomed = folder.with_name(f".discard-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _download_into_cache(
    text: str, source: str, expected: dict[str, str], root: Path, uri: str | None
) -> Path:
    import mlflow

    from bratslab.tracking.mlflow_runs import download_artifacts

    tmp = Path(tempfile.mkdtemp(prefix=".fill-", dir=root))
    try:
        try:
            local = download_artifacts(source, tmp / "download", uri)
        except mlflow.exceptions.MlflowException as e:
            raise FileNotFoundError(f"{text}: cannot download model: {e.message}") from None
        found = find_model_dir(local, text)
        actual = verify_model_dir(found, expected, text)
        staged = tmp / "model"
        _copy_model_files(found, staged, move=True)
        folder = root / str(_cache_key(actual))
        try:
            os.replace(staged, folder)
        except OSError:  # another process filled it first: use (and check) its copy
            if not is_model_root(folder):
                raise
            verify_model_dir(folder, actual, f"{text} (cached in {folder})")
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
