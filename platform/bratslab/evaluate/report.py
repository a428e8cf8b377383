"""Evaluation outputs: the CSV, its JSON summary, a Dice bar chart, a rich table, progress bars."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from bratslab.atomic import write_bytes, write_json, write_text
from bratslab.data.labels import REGIONS


def summary_path(csv_path: Path) -> Path:
    """``metrics.csv`` → ``metrics.summary.json`` (beside the CSV)."""
    return csv_path.with_name(f"{csv_path.stem}.summary.json")


def plot_path(csv_path: Path) -> Path:
    """``metrics.csv`` → ``metrics.png`` (beside the CSV)."""
    return csv_path.with_name(f"{csv_path.stem}.png")


def write_outputs(csv_path: Path, csv_text: str, summary: dict) -> None:
    """Write the CSV, the summary JSON and the bar chart, each atomically."""
    write_text(csv_path, csv_text)
    write_json(summary_path(csv_path), _finite(summary))
    write_bytes(plot_path(csv_path), dice_bar_chart(summary))


def _finite(obj):
    """JSON has no NaN: replace non-finite floats by None."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def dice_bar_chart(summary: dict) -> bytes:
    """PNG bytes: mean legacy and lesion-wise Dice per region (WT, TC, ET)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    import numpy as np

    regions = summary["regions"]
    x = np.arange(len(REGIONS))
    legacy = [regions[r]["dice"]["mean"] for r in REGIONS]
    lesion = [regions[r]["lesion_dice"]["mean"] for r in REGIONS]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.bar(x - 0.2, legacy, 0.4, label="Dice")
    ax.bar(x + 0.2, lesion, 0.4, label="lesion-wise Dice")
    ax.set_xticks(x, [r.upper() for r in REGIONS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over cases")
    ax.set_title(f"{summary['cases']} cases, challenge {summary['challenge'].upper()}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def print_summary(summary: dict) -> None:
    """Mean and median per region as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['cases']} cases · challenge {summary['challenge'].upper()}")
    table.add_column("region")
    for m in ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95"):
        table.add_column(f"{m} mean", justify="right")
        table.add_column("median", justify="right")
    table.add_column("TP/FP/FN", justify="right")
    for r in REGIONS:
        s = summary["regions"][r]
        cells = []
        for m in ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95"):
            cells += [f"{s[m]['mean']:.3f}", f"{s[m]['median']:.3f}"]
        table.add_row(r.upper(), *cells, f"{s['tp']}/{s['fp']}/{s['fn']}")
    console = Console()
    console.print(table)
    if summary.get("missing_predictions"):
        console.print(
            f"[yellow]no prediction (scored as empty): {', '.join(summary['missing_predictions'])}"
        )


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(description=None)``; a rich bar over ``total`` items when ``enabled``."""
    if not enabled:
        yield lambda description=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    task = bar.add_task(label, total=total)

    def advance(description: str | None = None) -> None:
        bar.update(task, advance=1, description=description or label)

    with bar:
        yield advance
