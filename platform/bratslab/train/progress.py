"""Per-epoch progress on the console, one line per epoch (like nnU-Net's training log)::

    smoke: epoch 2/10 | loss 0.8123 | Dice WT 0.812 TC 0.704 ET 0.651 | lesion Dice 0.602 |
    41.2 s/epoch | data wait 3% | ETA 5m30s

(one line; wrapped here; epochs are counted from 1 here and everywhere people read them). The
line is written by a ``ray.train.UserCallback`` in the Train controller, the process that
receives every ``ray.train.report``: relayed to the driver's console with
:func:`bratslab.console.relay` (printed there without Ray's ``(TrainController pid=…)`` prefix
and colours), and appended to a ``train_log.txt`` in the run folder, which survives the
console.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bratslab.console import relay

LESION_KEYS = ("val/lesion_dice_wt", "val/lesion_dice_tc", "val/lesion_dice_et")
LOG_FILE = "train_log.txt"  # in the run folder, beside Ray's files


def format_duration(seconds: float) -> str:
    """``42s``, ``5m30s``, ``2h05m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def lesion_dice_mean(metrics: Mapping[str, Any]) -> float | None:
    """``val/lesion_dice_mean`` if reported, else the mean of the three lesion-wise region
    Dice scores when all are present, else None."""
    if "val/lesion_dice_mean" in metrics:
        return float(metrics["val/lesion_dice_mean"])
    if all(k in metrics for k in LESION_KEYS):
        return sum(float(metrics[k]) for k in LESION_KEYS) / len(LESION_KEYS)
    return None


def format_epoch_line(
    metrics: Mapping[str, Any],
    total_epochs: int,
    *,
    epoch_s: float | None = None,
    eta_s: float | None = None,
    name: str | None = None,
) -> str:
    """One console line for a reported epoch.

    ``metrics`` is rank 0's report (``epoch`` 0-based, ``train/loss``, ``val/*``); validation
    scores are shown only when measured that epoch (``val/fresh``), the lesion-wise mean only
    when present. ``epoch_s`` defaults to the worker's ``time/epoch_s``. ``data wait`` is
    ``time/data_wait_frac``: the share of the training steps' time spent waiting for patches
    (a loader that cannot keep up shows here first; see ``data.loader``).
    """
    parts = [f"epoch {int(metrics['epoch']) + 1}/{total_epochs}"]
    if name:
        parts[0] = f"{name}: {parts[0]}"
    if "train/loss" in metrics:
        parts.append(f"loss {float(metrics['train/loss']):.4f}")
    regions = [k.removeprefix("val/dice_") for k in metrics if k.startswith("val/dice_")]
    regions = [r for r in regions if r != "mean"]  # WT, TC, ET, or the profile's, in its order
    if metrics.get("val/fresh") and regions:
        dice = " ".join(f"{r.upper()} {float(metrics[f'val/dice_{r}']):.3f}" for r in regions)
        parts.append(f"Dice {dice}")
        lesion = lesion_dice_mean(metrics)
        if lesion is not None:
            parts.append(f"lesion Dice {lesion:.3f}")
    if epoch_s is None and "time/epoch_s" in metrics:
        epoch_s = float(metrics["time/epoch_s"])
    if epoch_s is not None:
        parts.append(f"{epoch_s:.1f} s/epoch")
    if "time/data_wait_frac" in metrics:
        parts.append(f"data wait {100 * float(metrics['time/data_wait_frac']):.0f}%")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class EpochClock:
    """Wall seconds per epoch, measured between consecutive reports, and the ETA: their mean
    times the epochs left. The first report (no previous one) uses the worker's
    ``time/epoch_s``."""

    def __init__(self, total_epochs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_epochs = total_epochs
        self.clock = clock
        self.last: float | None = None
        self.durations: list[float] = []

    def tick(self, metrics: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """``(seconds this epoch, ETA seconds)`` for a report that just arrived."""
        now = self.clock()
        if self.last is not None:
            spent: float | None = now - self.last
        else:
            spent = float(metrics["time/epoch_s"]) if "time/epoch_s" in metrics else None
        self.last = now
        if spent is None:
            return None, None
        self.durations.append(spent)
        left = self.total_epochs - (int(metrics["epoch"]) + 1)
        return spent, left * sum(self.durations) / len(self.durations)


def progress_callback(name: str, total_epochs: int, log_file: Path | None = None):
    """A ``ray.train.UserCallback`` printing :func:`format_epoch_line` for every report."""
    import ray.train  # Ray

    class EpochProgress(ray.train.UserCallback):
        """Runs in the Train controller; it outlives worker-group restarts, so its clock
        spans the whole run."""

        def __init__(self) -> None:
            self.clock = EpochClock(total_epochs)

        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0]  # rank 0's report
            epoch_s, eta_s = self.clock.tick(m)
            line = format_epoch_line(m, total_epochs, epoch_s=epoch_s, eta_s=eta_s, name=name)
            relay(line)  # Ray forwards it to the driver, which prints it plainly
            if log_file is not None:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                with open(log_file, "a") as f:
                    f.write(line + "\n")

    return EpochProgress()
