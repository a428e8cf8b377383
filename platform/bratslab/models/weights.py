"""A model directory: ``model.pt`` (weights-only state dict) + ``model.json`` (how to rebuild it).

``model.json`` is ``{"model": ModelConfig dict, **extra}``; ``extra`` carries what inference needs
(``preprocessing``, ``patch_size``, ``store_fingerprint_hash``, ...). Weights are a plain
``state_dict`` of CPU tensors loaded with ``torch.load(weights_only=True)``: no pickled code runs.
Both files are written atomically, ``model.json`` last, so a directory with a ``model.json`` is
complete.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bratslab.atomic import write_bytes, write_json
from bratslab.config import ConfigError, validate
from bratslab.models.config import ModelConfig
from bratslab.models.zoo import build_model

WEIGHTS_FILE = "model.pt"
INFO_FILE = "model.json"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DDP/DataParallel (``.module``) or ``torch.compile`` (``._orig_mod``)
    wrappers, so saved keys never carry ``module.``/``_orig_mod.`` prefixes."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as detached, contiguous (not channels-last) CPU tensors."""
    return {
        k: v.detach().to("cpu").contiguous() for k, v in unwrap_model(model).state_dict().items()
    }


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/model.pt`` and ``directory/model.json``; return ``directory``."""
    directory = Path(directory)
    info = {"model": cfg.model_dump(mode="json"), **(extra or {})}
    json.dumps(info)  # fail before writing anything if extra is not JSON-serialisable
    buf = io.BytesIO()
    torch.save(cpu_state_dict(model), buf)
    write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
    write_json(directory / INFO_FILE, info)
    return directory


def read_model_info(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Parse ``directory/model.json`` into ``(ModelConfig, info dict)``.

    Raises:
        FileNotFoundError / ValueError / ConfigError naming the file and the problem.
    """
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a bratslab model directory)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict):
        raise ValueError(f"{path}: expected an object with a 'model' section")
    cfg = validate(ModelConfig, info["model"], f"{path} (model)")
    return cfg, info


def load_state_dict_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: not a weights-only file (it holds pickled objects other than tensors; "
            f"refusing to unpickle code): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable torch weights file: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor)")
    return state


def load_model_dir(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load ``model.pt``; return ``(model, info)``.

    The model is in eval mode on ``map_location``. Raises errors that name the offending file.
    """
    directory = Path(directory)
    cfg, info = read_model_info(directory)
    state = load_state_dict_file(directory / WEIGHTS_FILE, map_location)
    model = build_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{directory / WEIGHTS_FILE}: weights do not fit the model in "
            f"{directory / INFO_FILE}: {e}"
        ) from None
    return model.to(map_location).eval(), info


__all__ = [
    "ConfigError",
    "cpu_state_dict",
    "load_model_dir",
    "load_state_dict_file",
    "read_model_info",
    "save_model_dir",
    "unwrap_model",
]
