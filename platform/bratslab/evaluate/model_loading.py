"""Models for inference: read a model once on the driver, ship it as plain data, rebuild it in
each worker, and pick the torch device.

A :class:`ModelPayload` is ``model.json`` (as a dict) plus the raw ``model.pt`` bytes: plain data
that Ray puts in the object store once, so a model fetched from MLflow on the driver reaches
every node without the nodes talking to MLflow. Workers rebuild the network from it
(:func:`build_from_payload`, cached per process) with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bratslab.config import validate

# What inference needs from model.json beyond the architecture.
REQUIRED_INFO = ("preprocessing", "patch_size")


@dataclass(frozen=True)
class ModelPayload:
    """One model as plain data (JSON info + weights-only bytes) to ship to Ray workers."""

    info: dict[str, Any]
    weights: bytes
    source: str

    @property
    def key(self) -> str:
        """Content hash of the weights: the per-process model cache key."""
        return hashlib.sha1(self.weights).hexdigest()

    @property
    def output(self) -> str:
        """``"regions"`` (sigmoid WT/TC/ET) or ``"labels"`` (softmax over store labels)."""
        return self.info["model"].get("output", "regions")


def load_payload(ref: str | Path) -> ModelPayload:
    """Read ``model.json`` + ``model.pt`` of ``ref`` (checked by rebuilding the model once).

    ``ref``: a checkpoint folder or an MLflow model URI (resolved by
    :func:`bratslab.tracking.model_store.fetch_model_dir`).

    Raises:
        FileNotFoundError / ValueError naming the file and the problem.
    """
    from bratslab.models.weights import INFO_FILE, WEIGHTS_FILE, load_model_dir, read_model_info
    from bratslab.tracking.model_store import fetch_model_dir

    directory = fetch_model_dir(ref)
    _, info = read_model_info(directory)
    for key in REQUIRED_INFO:
        if key not in info:
            raise ValueError(f"{directory / INFO_FILE}: missing {key!r} (needed to predict)")
    load_model_dir(directory)  # fail here, naming the file, rather than in every worker
    return ModelPayload(info=info, weights=(directory / WEIGHTS_FILE).read_bytes(), source=str(ref))


def check_ensemble(payloads: list[ModelPayload]) -> None:
    """Ensemble members must share preprocessing, patch size and output kind."""
    if not payloads:
        raise ValueError("predict needs at least one model")
    first = payloads[0]
    for p in payloads[1:]:
        for key in REQUIRED_INFO:
            if p.info.get(key) != first.info.get(key):
                raise ValueError(
                    f"ensemble: {p.source} has a different {key!r} than {first.source}"
                )
        if p.info["model"].get("output") != first.info["model"].get("output"):
            raise ValueError(f"ensemble: {p.source} and {first.source} differ in output kind")


_MODEL_CACHE: dict[str, Any] = {}  # per worker process: weights hash → built model


def build_from_payload(payload: ModelPayload):
    """Rebuild the network of ``payload`` (cached per process) in eval mode on CPU."""
    import torch

    from bratslab.models.config import ModelConfig
    from bratslab.models.zoo import build_model

    if payload.key not in _MODEL_CACHE:
        cfg = validate(ModelConfig, payload.info["model"], f"{payload.source} (model.json)")
        model = build_model(cfg)
        state = torch.load(io.BytesIO(payload.weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        _MODEL_CACHE.clear()  # keep one ensemble's worth; workers serve one run at a time
        _MODEL_CACHE[payload.key] = model.eval()
    return _MODEL_CACHE[payload.key]


def resolve_device(name: str):
    """``"auto"`` → ``cuda`` when a GPU is visible, else ``cpu``; otherwise ``torch.device(name)``
    (``cpu``, ``cuda``, ``cuda:N``, ...).

    Raises:
        ValueError: ``name`` is not a device torch knows.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: {e}") from None


__all__ = [
    "ModelPayload",
    "build_from_payload",
    "check_ensemble",
    "load_payload",
    "resolve_device",
]
