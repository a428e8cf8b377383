"""Models in MLflow: log a model folder, fetch one back from any reference.

Format: a pyfunc *model from code* (:mod:`bratslab.inference.pyfunc_model`) whose artifact is
a model folder (:mod:`bratslab.tracking.model_folder`: a weights-only model directory or an
ensemble folder). Nothing is pickled, any volume size is accepted, and the model is registrable
like any MLflow 3 logged model (``models:/<model_id>``); every file of it gets a sha256 tag
(:func:`~bratslab.tracking.model_folder.hash_tag`) when it is logged and registered, and
fetching verifies all of them.

:func:`fetch_model_dir` is the one resolver of model references (local folder or MLflow URI) for
every stage. MLflow is imported only when a reference actually needs it, so resolving a local
checkpoint folder (``bratslab predict --model ckpt/``) stays fast.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

from bratslab.settings import get_settings
from bratslab.tracking.logged_hashes import (
    logged_hashes,
    logged_model_of_run,
    logged_model_of_runs_uri,
)
from bratslab.tracking.manifest import verify_local_dir, write_manifest

# is_ensemble_dir and write_ensemble_dir are re-exported (callers know them by this module).
from bratslab.tracking.model_folder import (  # noqa: F401
    ENSEMBLE_FILE,
    HASH_TAGS,
    RUN_ID,
    ModelIntegrityError,
    canonical_ref,
    copy_model_files,
    find_model_dir,
    hash_tag,
    hash_tags_of,
    is_ensemble_dir,
    is_model_root,
    model_hashes,
    model_id_of,
    not_a_model_dir,
    verify_model_dir,
    write_ensemble_dir,
)

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

# The pyfunc source MLflow stores with every logged model. A file path, not an import: it runs
# models, so it lives in the inference layer above this one.
PYFUNC_CODE = Path(__file__).parents[1] / "inference" / "pyfunc_model.py"
CACHE_KEY_CHARS = 16  # cache folder name: this many hex digits of model.pt's (ensemble.json's)
_FLUENT_LOCK = threading.Lock()  # log_model needs MLflow's process-global active run


def log_model_dir(
    model_dir: str | Path,
    *,
    run_id: str,
    name: str = "model",
    uri: str | None = None,
) -> str:
    """Log ``model_dir`` (model.pt + model.json, other files ignored; or an ensemble folder,
    :func:`~bratslab.tracking.model_folder.write_ensemble_dir`) as a pyfunc model of run
    ``run_id``; returns its URI ``models:/<model_id>`` (register it with the registry module).
    The logged model carries the sha256 of every file as tags (:func:`hash_tag`), checked on
    every fetch.
    """
    import mlflow

    from bratslab.tracking.mlflow_runs import global_uris, tracking_uri

    model_dir = Path(model_dir)
    if not is_model_root(model_dir):
        raise FileNotFoundError(not_a_model_dir(model_dir))
    uri = tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="bratslab-model-") as tmp:
        # Only the weights and config travel: a checkpoint dir also holds optimizer state.
        staged = Path(tmp) / "model_dir"
        copy_model_files(model_dir, staged)
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
    text = str(ref)
    path = Path(text).expanduser()
    if is_model_root(path):  # a local folder, even one whose name happens to contain ":/"
        verify_local_dir(path)
        return path
    label = text  # what errors name: the reference as given
    if RUN_ID.fullmatch(text):
        text = logged_model_of_run(text, uri)
        label = f"{label} ({text})"
    elif "://" not in text and ":/" not in text:
        text = canonical_ref(text)  # NAME@ALIAS, NAME/V: read as models:/..., with a hint
        if not text.startswith("models:/"):
            raise FileNotFoundError(not_a_model_dir(path))
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
    from bratslab.tracking import model_versions  # (imports mlflow)

    model_id = model_id_of(text)
    if text.startswith("runs:/"):
        model_id = logged_model_of_runs_uri(text, uri)
        if model_id is None:
            return text, {}
    if model_id is not None:
        return f"models:/{model_id}", logged_hashes(model_id, uri=uri, ref=text)
    try:
        name, alias, version = model_versions.parse_ref(text)
        info = model_versions.get_version(name, alias=alias, version=version, uri=uri)
    except model_versions.RegistryError as e:
        raise FileNotFoundError(f"{text}: cannot download model: {e}") from None
    return model_versions.model_uri(name, version=info.version), hash_tags_of(info.tags)


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
        copy_model_files(found, staged, move=True)
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
