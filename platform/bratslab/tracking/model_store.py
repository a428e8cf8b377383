"""Models in MLflow: log a weights-only model directory, fetch one back from any reference.

Format (decided deliberately, see REFERENCE.md): a pyfunc *model from code*
(:mod:`bratslab.tracking.pyfunc_model`) whose artifact is the model directory written by
:func:`bratslab.models.weights.save_model_dir` — ``model.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and ``model.json`` (architecture config, preprocessing
config, patch size, store fingerprint). Nothing is pickled, any volume size is accepted, and the
model is registrable like any MLflow 3 logged model (``models:/<model_id>``).
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

import mlflow

from bratslab.settings import get_settings
from bratslab.tracking.mlflow_runs import global_uris, tracking_uri

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_FILES = ("model.pt", "model.json")
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
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a model directory (needs {MODEL_FILES})")
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


def fetch_model_dir(ref: str | Path, *, uri: str | None = None, cache: Path | None = None) -> Path:
    """A local model directory for ``ref``.

    ``ref`` is a local folder holding model.pt + model.json (returned as is) or an MLflow model
    URI: ``runs:/<run_id>/<name>``, ``models:/NAME@alias``, ``models:/NAME/VERSION`` or
    ``models:/<model_id>``. Remote models are downloaded under ``$BRATSLAB_HOME/cache/models``
    (fresh each call, since an alias can move), and the model directory inside is returned.
    """
    text = str(ref)
    if "://" not in text and ":/" not in text:
        path = Path(text).expanduser()
        if is_model_dir(path):
            return path
        raise FileNotFoundError(f"{path}: not a model directory (needs {MODEL_FILES})")
    if not text.startswith(("runs:/", "models:/")):
        raise ValueError(f"{text}: expected a model directory, runs:/... or models:/... URI")
    uri = tracking_uri(uri)
    root = cache or get_settings().home / "cache" / "models"
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    dst = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=text, dst_path=str(dst), tracking_uri=uri, registry_uri=uri
            )
        )
    except mlflow.exceptions.MlflowException as e:
        shutil.rmtree(dst, ignore_errors=True)
        raise FileNotFoundError(f"{text}: cannot download model: {e.message}") from None
    found = sorted(p.parent for p in local.rglob("model.json") if is_model_dir(p.parent))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{text}: expected one model directory in the download, found {len(found)}"
        )
    return found[0]
