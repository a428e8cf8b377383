"""What a worker's loop carries from epoch to epoch and, through the checkpoint, across restarts.

:func:`restore` reads it (with the weights, optimizer, schedule, scaler and RNG state) from a
checkpoint folder; :func:`checkpoint_state` is what each epoch's checkpoint records for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bratslab.train.checkpoint import (
    load_train_state,
    load_weights,
    rng_state,
    set_rng_state,
)
from bratslab.train.optim import OptimizerBundle

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    pass


NOT_VALIDATED = -1.0  # checkpoint score of epochs without validation (ranked below any Dice)
UNMEASURED = ("val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean")  # 0 until validated


@dataclass
class LoopState:
    """What carries over from epoch to epoch and, through the checkpoint, across restarts."""

    epoch: int = 0  # completed epochs: where this attempt starts
    global_step: int = 0
    best: float = NOT_VALIDATED  # best val/dice_mean so far
    resumed_from: int = 0
    last_val: dict[str, float] = field(default_factory=lambda: dict.fromkeys(UNMEASURED, 0.0))


def restore(
    ckpt_dir: str | Path,
    model: nn.Module,
    bundle: OptimizerBundle,
    scaler: torch.amp.GradScaler,
) -> LoopState:
    """Load a checkpoint folder's weights, optimizer, schedule, scaler and RNG state in place;
    return the loop state it recorded (with the last measured validation carried over)."""
    model.load_state_dict(load_weights(ckpt_dir))
    state = load_train_state(ckpt_dir)
    bundle.optimizer.load_state_dict(state["optimizer"])
    if bundle.scheduler is not None and state.get("scheduler"):
        bundle.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    epoch = int(state["epoch"])
    loop_state = LoopState(epoch, int(state["global_step"]), float(state["best_dice"]), epoch)
    measured = state.get("metrics", {})
    loop_state.last_val.update(
        {k: v for k, v in measured.items() if k.startswith(("val/dice", "val/lesion"))}
    )
    return loop_state


def checkpoint_state(
    bundle: OptimizerBundle,
    scaler: torch.amp.GradScaler,
    epoch: int,
    loop_state: LoopState,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """``train_state.pt`` after ``epoch``: everything :func:`restore` needs to continue."""
    return {
        "epoch": epoch + 1,  # completed epochs: the next run starts here
        "global_step": loop_state.global_step,
        "optimizer": bundle.optimizer.state_dict(),
        "scheduler": bundle.scheduler.state_dict() if bundle.scheduler else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
        "best_dice": loop_state.best,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
