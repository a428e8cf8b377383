"""Models for inference: read a model once on the driver, ship it as plain data, rebuild it in
each worker, and pick the torch device.

A :class:`ModelPayload` is ``model.json`` (as a dict) plus the raw ``model.pt`` bytes: plain data
that Ray puts in the object store once, so a model fetched from MLflow on the driver reaches
every node without the nodes talking to MLflow. Workers rebuild the network from it
(:func:`build_from_payload`, cached per process) with ``torch.load(weights_only=True)``.

An ensemble folder (``ensemble.json`` + ``members/<name>/``, e.g. a registered version made by
``bratslab models register --ensemble``) loads as one payload whose ``members`` are the member
payloads (:func:`member_payloads` lists them); it builds into an :class:`EnsembleNet`, which
averages the members' probabilities exactly like several ``--model`` arguments do (see there).
:func:`load_member_models` builds the networks ``predict`` averages in one call; the MLflow
pyfunc of an ensemble version (:mod:`bratslab.inference.pyfunc_model`) predicts with them.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bratslab.config import validate
from bratslab.data.region_set import RegionSet, model_region_set
from bratslab.models.config import ModelConfig
from bratslab.tracking.model_folder import is_ensemble_dir, member_path, read_ensemble
from bratslab.tracking.model_store import fetch_model_dir

# What inference needs from model.json beyond the architecture.
REQUIRED_INFO = ("preprocessing", "patch_size")


@dataclass(frozen=True)
class ModelPayload:
    """One model as plain data (JSON info + weights-only bytes) to ship to Ray workers."""

    info: dict[str, Any]
    weights: bytes
    source: str
    members: tuple[ModelPayload, ...] = field(default=())  # an ensemble's; then weights is b""

    @property
    def key(self) -> str:
        """Content hash of the weights (of every member's, in order, for an ensemble): the
        per-process model cache key."""
        if self.members:
            return hashlib.sha1("".join(m.key for m in self.members).encode()).hexdigest()
        return hashlib.sha1(self.weights).hexdigest()

    @property
    def output(self) -> str:
        """``"regions"`` (sigmoid WT/TC/ET) or ``"labels"`` (softmax over store labels)."""
        return self.info["model"].get("output", "regions")

    @property
    def regions(self) -> RegionSet:
        """The regions the model outputs and is scored on (its profile's; BraTS 2023's for
        models trained before profiles existed)."""
        return model_region_set(self.info)


def load_payload(ref: str | Path) -> ModelPayload:
    """Read ``model.json`` + ``model.pt`` of ``ref`` (checked by rebuilding the model once).

    ``ref``: a checkpoint folder, an ensemble folder or an MLflow model URI (resolved by
    :func:`bratslab.tracking.model_store.fetch_model_dir`). An ensemble comes back as one
    payload with its members (checked by :func:`check_ensemble`); its ``info`` is the first
    member's (they share preprocessing, patch size and output kind) plus ``"ensemble"``:
    ``{"members": [names], "store": training store or None, "cv_run_id": ... or None}``.

    Raises:
        FileNotFoundError / ValueError naming the file and the problem.
    """
    directory = fetch_model_dir(ref)
    if not is_ensemble_dir(directory):
        return _read_model_dir(directory, str(ref))
    described = read_ensemble(directory)
    names = [m["name"] for m in described["members"]]
    members = [_read_model_dir(directory / member_path(n), f"{ref} [{n}]") for n in names]
    check_ensemble(members)
    ensemble = {"members": names, **{k: described.get(k) for k in ("store", "cv_run_id")}}
    info = {**members[0].info, "ensemble": ensemble}
    return ModelPayload(info=info, weights=b"", source=str(ref), members=tuple(members))


def _read_model_dir(directory: Path, source: str) -> ModelPayload:
    from bratslab.models.weights import INFO_FILE, WEIGHTS_FILE, load_model_dir, read_model_info

    _, info = read_model_info(directory)
    for key in REQUIRED_INFO:
        if key not in info:
            raise ValueError(f"{directory / INFO_FILE}: missing {key!r} (needed to predict)")
    load_model_dir(directory)  # fail here, naming the file, rather than in every worker
    return ModelPayload(info=info, weights=(directory / WEIGHTS_FILE).read_bytes(), source=source)


def member_payloads(payloads: list[ModelPayload]) -> list[ModelPayload]:
    """Every single model among ``payloads``, ensembles expanded into their members."""
    return [m for p in payloads for m in (p.members or (p,))]


def check_ensemble(payloads: list[ModelPayload]) -> None:
    """Ensemble members must share preprocessing, patch size, output kind and regions."""
    if not payloads:
        raise ValueError("predict needs at least one model")
    payloads = member_payloads(payloads)
    first = payloads[0]
    for p in payloads[1:]:
        for key in REQUIRED_INFO:
            if p.info.get(key) != first.info.get(key):
                raise ValueError(
                    f"ensemble: {p.source} has a different {key!r} than {first.source}"
                )
        if p.info["model"].get("output") != first.info["model"].get("output"):
            raise ValueError(f"ensemble: {p.source} and {first.source} differ in output kind")
        if p.regions != first.regions:
            raise ValueError(
                f"ensemble: {p.source} predicts the {p.regions.profile} regions, "
                f"{first.source} the {first.regions.profile} ones"
            )


def load_member_models(ref: str | Path) -> tuple[list[Any], dict[str, Any]]:
    """The networks ``bratslab predict --model ref`` averages, built once each, and the info
    they share: a single model alone, or an ensemble's members.

    The same steps as :func:`bratslab.inference.predict.predict_folder`: :func:`load_payload`,
    :func:`member_payloads`, :func:`check_ensemble`, then each member rebuilt from its
    weights-only bytes (``torch.load(weights_only=True)``), in eval mode on CPU. Passed as the
    ``models`` of :func:`bratslab.inference.sliding_window.predict_probabilities`, their
    probabilities are averaged exactly as ``predict`` averages them. Not taken from the
    per-process cache (which keeps one entry): the caller holds them.

    Returns:
        ``(models, info)``: ``info`` is ``load_payload(ref).info`` (patch size,
        preprocessing, ``model.output``; ``"ensemble"`` for an ensemble).
    Raises:
        FileNotFoundError / ValueError naming the file and the problem.
    """
    payload = load_payload(ref)
    members = member_payloads([payload])
    check_ensemble(members)
    return [_build(m) for m in members], payload.info


_MODEL_CACHE: dict[tuple[str, ...], Any] = {}  # per worker process: weights hashes → models


def build_models(payloads: list[ModelPayload]) -> list:
    """Rebuild the networks of ``payloads`` (repeated ``-m``), cached per process as one set:
    a predict actor serves one set for every case, so only the last set is kept."""
    key = tuple(p.key for p in payloads)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = [_build_one(p) for p in payloads]
    return _MODEL_CACHE[key]


def build_from_payload(payload: ModelPayload):
    """Rebuild the network of ``payload`` (cached per process) in eval mode on CPU; an
    ensemble's as an :class:`EnsembleNet` of its members."""
    return build_models([payload])[0]


def _build_one(payload: ModelPayload):
    if payload.members:
        return EnsembleNet([_build(m) for m in payload.members], payload.output).eval()
    return _build(payload)


def _build(payload: ModelPayload):
    import torch

    from bratslab.models.zoo import build_model

    cfg = validate(ModelConfig, payload.info["model"], f"{payload.source} (model.json)")
    model = build_model(cfg)
    state = torch.load(io.BytesIO(payload.weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@functools.cache
def _ensemble_net_cls():
    from torch import nn

    class _EnsembleNet(nn.Module):
        """Members → the logits of their mean probabilities.

        ``forward(x)``: ``(B, C_in, x, y, z)`` → ``(B, C, x, y, z)`` float32 logits whose
        sigmoid (``"regions"``) or softmax (``"labels"``) is the mean of the members'
        sigmoid/softmax: ``logit(mean_m sigmoid(l_m))`` resp. ``log(mean_m softmax(l_m))``.
        The sliding window and TTA apply that activation to every window, so the result is
        the mean of the members' probabilities per window, the same as passing the members as
        separate models (the uncertainty map, though, then varies over TTA views only).
        """

        def __init__(self, members, output: str):
            super().__init__()
            self.members = nn.ModuleList(members)
            self.output = output

        def forward(self, x):
            import torch

            total = None
            for m in self.members:
                logits = m(x)
                if isinstance(logits, (list, tuple)):  # deep supervision: full resolution
                    logits = logits[0]
                logits = logits.float()
                p = torch.sigmoid(logits) if self.output == "regions" else logits.softmax(1)
                total = p if total is None else total + p
            mean = total / len(self.members)
            # ±inf where the mean is exactly 0 or 1: sigmoid/softmax map them back exactly.
            return torch.logit(mean) if self.output == "regions" else mean.log()

    return _EnsembleNet


def EnsembleNet(members, output: str):  # noqa: N802 - builds the class lazily (torch import)
    """An ``nn.Module`` averaging ``members``' probabilities (see ``_EnsembleNet``)."""
    return _ensemble_net_cls()(members, output)


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
    "EnsembleNet",
    "ModelPayload",
    "build_from_payload",
    "build_models",
    "check_ensemble",
    "load_member_models",
    "load_payload",
    "member_payloads",
    "resolve_device",
]
