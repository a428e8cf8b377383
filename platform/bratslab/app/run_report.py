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

# Label colours (RGBA) for overlays, index = store label: NCR red, ED green, ET yellow, and the
# resection cavity (post-treatment stores) blue.
_LABEL_RGBA = np.array(
    [
        [0, 0, 0, 0],
        [0.9, 0.1, 0.1, 0.6],
        [0.1, 0.8, 0.2, 0.45],
        [1.0, 0.85, 0.0, 0.7],
        [0.2, 0.5, 1.0, 0.6],
    ]
)
_LABEL_NAMES = {1: "NCR (necrosis)", 2: "ED (oedema)", 3: "ET (enhancing)", 4: "RC (cavity)"}
_MODALITY_NAMES = {"t1n": "T1", "t1c": "T1 contrast", "t2w": "T2", "t2f": "FLAIR"}


@dataclass(frozen=True)
class OverlayCase:
    """One case to draw: a background image ``(X, Y, Z)`` of ``modality`` and label volumes
    ``(X, Y, Z)``.

    Labels use the store convention {0, 1, 2, 3} (ET = 3; 4 = resection cavity).
    """

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    modality: str = "t2f"


def best_slice(labels: np.ndarray) -> int:
    """Axial index (last axis) with the most tumour voxels; the middle slice if there is none."""
    area = (labels > 0).reshape(-1, labels.shape[-1]).sum(0)
    return int(area.argmax()) if area.any() else labels.shape[-1] // 2


def brain_box(image: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """The in-plane bounding box of a slice's non-zero voxels (plus ``margin``), so the brain
    fills its panel; the whole slice when it is empty."""
    if not image.any():
        return slice(None), slice(None)
    box = []
    for axis in (1, 0):
        hit = np.flatnonzero(image.any(axis=axis))
        lo, hi = max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1
        box.append(slice(lo, hi))
    return box[0], box[1]


def _overlay(ax, image: np.ndarray, labels: np.ndarray, title: str) -> None:
    box = brain_box(image)
    image, labels = image[box], labels[box]
    lo, hi = np.percentile(image, [1, 99]) if image.any() else (0.0, 1.0)
    ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
    ax.imshow(np.rot90(_LABEL_RGBA[np.clip(labels, 0, 4).astype(np.int64)]))
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def _label_legend(fig, drawn: set[int]) -> None:
    """One colour key for every overlay: the labels drawn in any of them."""
    from matplotlib.patches import Patch

    shown = sorted(drawn & set(_LABEL_NAMES))
    handles = [Patch(color=_LABEL_RGBA[v][:3], label=_LABEL_NAMES[v]) for v in shown]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10)


def _curves(ax, curves: Mapping[str, Sequence[tuple[int, float]]], metric: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for label, points in curves.items():
        if points:
            # MLflow steps are 0-based epochs; people count epochs from 1.
            ax.plot([p[0] + 1 for p in points], [p[1] for p in points], "o-", label=label)
    ax.set(xlabel="epoch", ylabel=metric, ylim=(0, 1), title="learning curves (validation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        ax.legend(fontsize=8)


def _region_bars(ax, region_dice: Mapping[str, Mapping[str, float]], title: str) -> None:
    """Grouped bars, one group per region, each bar labelled with its value."""
    groups = list(region_dice)
    regions = list(dict.fromkeys(r for g in groups for r in region_dice[g])) or list(REGIONS)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(regions))
    for i, group in enumerate(groups):
        values = [float(region_dice[group].get(r, np.nan)) for r in regions]
        bars = ax.bar(x + i * width, values, width, label=group)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, [r.upper() for r in regions])
    ax.set(ylim=(0, 1.1), ylabel="Dice", title=title)
    if groups:
        ax.legend(fontsize=8, loc="lower right")


def render_report(
    out_png: str | Path,
    *,
    curves: Mapping[str, Sequence[tuple[int, float]]],
    region_dice: Mapping[str, Mapping[str, float]],
    overlays: Sequence[OverlayCase] = (),
    title: str = "bratslab run report",
    curve_metric: str = "val/dice_mean",
    bars_title: str = "per-region Dice",
) -> Path:
    """Write the report PNG atomically and return its path: a figure to paste into a slide.

    Args:
        out_png: destination file.
        curves: label → ``[(epoch, curve_metric), ...]`` (one line per trial/run; epochs
            0-based as MLflow steps, plotted from 1 on whole-number ticks).
        region_dice: bar group (e.g. "voxel Dice", "lesion-wise Dice") → region → value; the
            regions are those the groups name, in their order (WT/TC/ET when there are none).
        overlays: cases drawn as ground truth vs prediction on their most tumorous axial slice,
            cropped to the brain, with the modality named and one colour key for the labels.
        title: figure title.
        curve_metric: what ``curves`` hold (the y-axis label).
        bars_title: what the bars show (the data set, TTA, post-processing).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(overlays)
    fig = plt.figure(figsize=(12, 4.2 + 5.2 * len(overlays)), dpi=100)
    grid = fig.add_gridspec(rows, 2, height_ratios=[4.2] + [5.2] * len(overlays))
    _curves(fig.add_subplot(grid[0, 0]), curves, curve_metric)
    _region_bars(fig.add_subplot(grid[0, 1]), region_dice, bars_title)

    drawn: set[int] = set()  # the labels on the slices shown (not the whole volumes)
    for row, case in enumerate(overlays, start=1):
        z = best_slice(case.truth)
        shown = f"{_MODALITY_NAMES.get(case.modality, case.modality)} ({case.modality})"
        for col, (labels, what) in enumerate(
            ((case.truth, "ground truth"), (case.prediction, "prediction"))
        ):
            drawn.update(int(v) for v in np.unique(labels[..., z]))
            _overlay(
                fig.add_subplot(grid[row, col]),
                case.image[..., z],
                labels[..., z],
                f"{case.case_id}: {what}\n{shown}, axial slice {z + 1}",
            )
    _label_legend(fig, drawn)

    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0.04 if overlays else 0, 1, 1))
    out_png = Path(out_png)
    with atomic.atomic_open(out_png) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png
