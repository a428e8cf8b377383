"""Training checkpoints: a folder Ray Train persists and hands back on restart.

Layout (every file loads with ``torch.load(weights_only=True)`` or as JSON)::

    model.pt, model.json   the model directory (bratslab.models.weights): weights + config +
                           preprocessing config, patch size, store fingerprint, output type
    train_state.pt         optimizer, LR schedule, GradScaler, completed epochs, global step,
                           torch RNG states (tensors), best validation Dice so far
    job.json               the resolved job spec

For schedule-free AdamW the weights are saved in the optimizer's *eval* (averaged) mode, the
ones to deploy; the optimizer's own state records the mode, so ``optimizer.train()`` after
loading restores the training sequence exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bratslab.atomic import atomic_open, write_json
from bratslab.models.config import ModelConfig
from bratslab.models.weights import save_model_dir
from bratslab.train.failures import CheckpointUnusable

TRAIN_STATE = "train_state.pt"
JOB_JSON = "job.json"


def rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA) generator states as uint8 tensors (weights_only-loadable)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    model_cfg: ModelConfig,
    model_extra: dict[str, Any],
    train_state: dict[str, Any],
    job: dict[str, Any],
) -> Path:
    """Write a checkpoint folder (files written atomically). ``model`` is the bare module."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model_dir(folder, model, model_cfg, extra=model_extra)
    with atomic_open(folder / TRAIN_STATE) as f:
        torch.save(train_state, f)
    write_json(folder / JOB_JSON, job)
    return folder


@contextmanager
def resuming_from(folder: str) -> Iterator[None]:
    """Errors of loading the checkpoint ``folder`` (its persisted path) inside the block become
    :class:`CheckpointUnusable`: weights-only refusal, a truncated or foreign file, a missing
    file or key. Other I/O errors stay as they are (a shared filesystem may recover)."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError) as e:
        raise CheckpointUnusable(f"{folder}: cannot resume from this checkpoint: {e}") from e
    except OSError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointUnusable(
            f"{folder}: cannot resume from this checkpoint: {type(e).__name__}: {first}"
        ) from e


def load_train_state(folder: str | Path) -> dict[str, Any]:
    """``train_state.pt`` of a checkpoint folder (weights-only unpickling)."""
    return torch.load(Path(folder) / TRAIN_STATE, map_location="cpu", weights_only=True)


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint or model folder (weights-only unpickling)."""
    return torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
