"""Models in MLflow: log a weights-only model directory, fetch one back from any reference.

Format: a pyfunc *model from code*
(:mod:`bratslab.tracking.pyfunc_model`) whose artifact is the model directory written by
:func:`bratslab.models.weights.save_model_dir` — ``model.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and ``model.json`` (architecture config, preprocessing
config, patch size, store fingerprint). Nothing is pickled, any volume size is accepted, and the
model is registrable like any MLflow 3 logged model (``models:/<model_id>``).

:func:`fetch_model_dir` is the one resolver of model references (local folder or MLflow URI) for
every stage. MLflow is imported only when a reference actually needs it, so resolving a local
checkpoint folder (``bratslab predict --model ckpt/``) stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

from bratslab.settings import get_settings

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_FILES = ("model.pt", "model.json")  # bratslab.models.weights' WEIGHTS_FILE, INFO_FILE
# Version tags holding each file's sha256, set at registration, checked on every fetch.
HASH_TAGS = {"model.pt": "bratslab.sha256.model_pt", "model.json": "bratslab.sha256.model_json"}
CACHE_KEY_CHARS = 16  # cache folder name: this many hex digits of model.pt's sha256
_FLUENT_LOCK = threading.Lock()  # log_model needs MLflow's process-global active run


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds ``model.pt`` and ``model.json``."""
    p = Path(path)
    return all((p / f).is_file() for f in MODEL_FILES)


def log_model_dir(
    model_dir: str | Path,
    *,
    run_id: str,
    name: str = "model",
    uri: str | None = None,
) -> str:
    """Log ``model_dir`` (model.pt + model.json, other files ignored) as a pyfunc model of run
    ``run_id``; returns its URI ``models:/<model_id>`` (register it with the registry module).
    """
    import mlflow

    from bratslab.tracking.mlflow_runs import global_uris, tracking_uri

    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise FileNotFoundError(_not_a_model_dir(model_dir))
    uri = tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="bratslab-model-") as tmp:
        # Only the weights and config travel: a checkpoint dir also holds optimizer state.
        staged = Path(tmp) / "model_dir"
        staged.mkdir()
        for f in MODEL_FILES:
            shutil.copy2(model_dir / f, staged / f)
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
            )
    log.info("logged model %s (run %s)", info.model_uri, run_id)
    return info.model_uri


def model_id_of(model_uri: str) -> str | None:
    """``models:/m-abc`` → ``m-abc``; None for other URIs."""
    rest = model_uri.removeprefix("models:/")
    if rest == model_uri or "/" in rest or "@" in rest:
        return None
    return rest


def _not_a_model_dir(path: Path) -> str:
    return f"{path}: not a model directory (needs {' and '.join(MODEL_FILES)})"


class ModelIntegrityError(ValueError):
    """A downloaded model file does not match the sha256 recorded when it was registered."""

    def __init__(self, ref: str, file: str, expected: str, actual: str):
        super().__init__(
            f"{ref}: {file} does not match the registered version (sha256 expected {expected}, "
            f"got {actual}); the artifact store was changed after registration, refusing it"
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
    """``{version tag: sha256}`` of a model directory's files (see :data:`HASH_TAGS`)."""
    return {tag: sha256_file(Path(model_dir) / f) for f, tag in HASH_TAGS.items()}


def verify_model_dir(model_dir: Path, expected: dict[str, str], ref: str) -> dict[str, str]:
    """Check ``model_dir`` against ``expected`` (version tags; a tag not there is not checked).

    Returns:
        The actual hashes, keyed like :data:`HASH_TAGS`.
    Raises:
        ModelIntegrityError: a file's sha256 differs from its tag, naming the file and both.
    """
    actual = model_hashes(model_dir)
    for f, tag in HASH_TAGS.items():
        want = expected.get(tag)
        if want is not None and want != actual[tag]:
            raise ModelIntegrityError(ref, str(model_dir / f), want, actual[tag])
    return actual


def find_model_dir(root: Path, ref: str) -> Path:
    """The single model directory inside a download (a pyfunc keeps it under artifacts/)."""
    found = sorted(p.parent for p in root.rglob("model.json") if is_model_dir(p.parent))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{ref}: expected one model directory in the download, found {len(found)}"
        )
    return found[0]


def fetch_model_dir(ref: str | Path, *, uri: str | None = None, cache: Path | None = None) -> Path:
    """A local model directory for ``ref``.

    ``ref`` is a local folder holding model.pt + model.json (returned as is, without importing
    MLflow) or an MLflow model URI: ``runs:/<run_id>/<name>``, ``models:/NAME@alias``,
    ``models:/NAME/VERSION`` or ``models:/<model_id>``.

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
    text = str(ref)
    path = Path(text).expanduser()
    if is_model_dir(path):  # a local folder, even one whose name happens to contain ":/"
        return path
    if "://" not in text and ":/" not in text:
        raise FileNotFoundError(_not_a_model_dir(path))
    if not text.startswith(("runs:/", "models:/")):
        raise ValueError(f"{text}: expected a model directory, runs:/... or models:/... URI")
    root = cache or get_settings().home / "cache" / "models"
    root.mkdir(parents=True, exist_ok=True)
    source, expected = _resolve_version(text, uri)
    if expected:
        hit = _cached(root, expected, text)
        if hit is not None:
            return hit
    else:
        log.warning("%s: no sha256 recorded at registration; its files are not verified", text)
    return _download_into_cache(text, source, expected, root, uri)


def _resolve_version(text: str, uri: str | None) -> tuple[str, dict[str, str]]:
    """``(URI to download, expected hash tags)``: a registered version by number (an alias
    resolved now) and its hash tags; any other URI as is, with no expectations."""
    from bratslab.tracking import registry

    if not text.startswith("models:/") or model_id_of(text) is not None:
        return text, {}
    try:
        name, alias, version = registry.parse_ref(text)
        info = registry.get_version(name, alias=alias, version=version, uri=uri)
    except registry.RegistryError as e:
        raise FileNotFoundError(f"{text}: cannot download model: {e}") from None
    expected = {t: info.tags[t] for t in HASH_TAGS.values() if t in info.tags}
    return registry.model_uri(name, version=info.version), expected


def _cached(root: Path, expected: dict[str, str], ref: str) -> Path | None:
    """The verified cache folder for ``expected`` hashes, or None when it is not there."""
    want = expected.get(HASH_TAGS["model.pt"])
    folder = root / want[:CACHE_KEY_CHARS] if want else None
    if folder is None or not is_model_dir(folder):
        return None
    try:
        verify_model_dir(folder, expected, f"{ref} (cached in {folder})")
    except ModelIntegrityError as e:  # a damaged cache entry: drop it, download again
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
        staged.mkdir()
        for f in MODEL_FILES:
            os.replace(found / f, staged / f)
        folder = root / actual[HASH_TAGS["model.pt"]][:CACHE_KEY_CHARS]
        try:
            os.replace(staged, folder)
        except OSError:  # another process filled it first: use (and check) its copy
            if not is_model_dir(folder):
                raise
            verify_model_dir(folder, actual, f"{text} (cached in {folder})")
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
