"""The run report people would rather see than read: one PNG of learning curves, per-region Dice
and prediction-vs-ground-truth overlay slices.

Pure numpy + matplotlib (Agg); the caller fetches metric histories (``tracking``) and volumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bratslab import atomic
from bratslab.data.labels import REGIONS

# Label colours (RGBA) for overlays: NCR red, ED green, ET yellow; index = store label.
_LABEL_RGBA = np.array(
    [[0, 0, 0, 0], [0.9, 0.1, 0.1, 0.6], [0.1, 0.8, 0.2, 0.45], [1.0, 0.85, 0.0, 0.7]]
)


@dataclass(frozen=True)
class OverlayCase:
    """One case to draw: a background image ``(X, Y, Z)`` and label volumes ``(X, Y, Z)``.

    Labels use the store convention {0, 1, 2, 3} (ET = 3).
    """

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


def best_slice(labels: np.ndarray) -> int:
    """Axial index (last axis) with the most tumour voxels; the middle slice if there is none."""
    area = (labels > 0).reshape(-1, labels.shape[-1]).sum(0)
    return int(area.argmax()) if area.any() else labels.shape[-1] // 2


def _overlay(ax, image: np.ndarray, labels: np.ndarray, title: str) -> None:
    lo, hi = np.percentile(image, [1, 99]) if image.any() else (0.0, 1.0)
    ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
    ax.imshow(np.rot90(_LABEL_RGBA[np.clip(labels, 0, 3).astype(np.int64)]))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def render_report(
    out_png: str | Path,
    *,
    curves: Mapping[str, Sequence[tuple[int, float]]],
    region_dice: Mapping[str, Mapping[str, float]],
    overlays: Sequence[OverlayCase] = (),
    title: str = "bratslab run report",
) -> Path:
    """Write the report PNG atomically and return its path.

    Args:
        out_png: destination file.
        curves: label → ``[(epoch, val/dice_mean), ...]`` (one line per trial/run; epochs
            0-based as MLflow steps, plotted from 1).
        region_dice: group label (e.g. architecture or "champion") → {"wt", "tc", "et"} → Dice.
        overlays: cases drawn as ground truth vs prediction on their most tumorous axial slice.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = 1 + len(overlays)
    fig = plt.figure(figsize=(11, 3.4 * rows), dpi=90)
    grid = fig.add_gridspec(rows, 2)

    ax = fig.add_subplot(grid[0, 0])
    for label, points in curves.items():
        if points:
            # MLflow steps are 0-based epochs; people count epochs from 1.
            ax.plot([p[0] + 1 for p in points], [p[1] for p in points], "o-", label=label)
    ax.set(xlabel="epoch", ylabel="val/dice_mean", ylim=(0, 1), title="learning curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        ax.legend(fontsize=7)

    ax = fig.add_subplot(grid[0, 1])
    groups = list(region_dice)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(REGIONS))
    for i, group in enumerate(groups):
        values = [float(region_dice[group].get(r, np.nan)) for r in REGIONS]
        ax.bar(x + i * width, values, width, label=group)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, [r.upper() for r in REGIONS])
    ax.set(ylim=(0, 1), ylabel="Dice", title="per-region Dice")
    if groups:
        ax.legend(fontsize=7)

    for row, case in enumerate(overlays, start=1):
        z = best_slice(case.truth)
        _overlay(
            fig.add_subplot(grid[row, 0]),
            case.image[..., z],
            case.truth[..., z],
            f"{case.case_id} ground truth (z={z})",
        )
        _overlay(
            fig.add_subplot(grid[row, 1]),
            case.image[..., z],
            case.prediction[..., z],
            f"{case.case_id} prediction (z={z})",
        )

    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic.atomic_open(out_png) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png
