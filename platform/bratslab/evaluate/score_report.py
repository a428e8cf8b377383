"""The score report of `bratslab evaluate`: the CSV, its JSON summary, a Dice bar chart, a rich
table, progress bars."""

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


def check_output_files(*paths: str | Path) -> None:
    """Fail before any work when one of ``paths`` cannot be written as a file.

    Raises:
        ValueError: a path is an existing directory, or one of its parents is an existing file.
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"{path}: is a directory; give the path of a file to write")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{path}: cannot be written, {parent} is not a directory")
                break


def write_outputs(csv_path: Path, csv_text: str, summary: dict) -> None:
    """Write the CSV, the summary JSON and the bar chart, each atomically."""
    write_text(csv_path, csv_text)
    write_json(summary_path(csv_path), json_finite(summary))
    write_bytes(plot_path(csv_path), dice_bar_chart(summary))


def json_finite(obj):
    """JSON has no NaN: replace non-finite floats by None."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_finite(v) for v in obj]
    return obj


def dice_bar_chart(summary: dict) -> bytes:
    """PNG bytes: mean legacy and lesion-wise Dice per region (WT, TC, ET)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    import numpy as np

    regions = summary["regions"]
    names = list(regions) or list(REGIONS)  # WT/TC/ET, or a profile's regions
    x = np.arange(len(names))
    legacy = [regions[r]["dice"]["mean"] for r in names]
    lesion = [regions[r]["lesion_dice"]["mean"] for r in names]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.bar(x - 0.2, legacy, 0.4, label="Dice")
    ax.bar(x + 0.2, lesion, 0.4, label="lesion-wise Dice")
    ax.set_xticks(x, [r.upper() for r in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over cases")
    ax.set_title(f"{summary['cases']} cases, challenge {summary['challenge'].upper()}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# Summary table rows: (summary key, label, decimals). HD95 is in mm and up to 374 (the
# empty-vs-non-empty penalty), so one decimal keeps its cells as narrow as the Dice ones.
TABLE_METRICS = (
    ("dice", "Dice", 3),
    ("hd95", "HD95 mm", 1),
    ("nsd", "NSD", 3),
    ("lesion_dice", "lesion Dice", 3),
    ("lesion_hd95", "lesion HD95 mm", 1),
)


def summary_table(summary: dict):
    """A rich table of :func:`~bratslab.evaluate.scoring.summarise`'s output: one row per
    metric, one column per region, cells ``mean / median``, then lesion counts TP/FP/FN.

    About 70 characters wide whatever the numbers, so it stays readable in an 80-column
    terminal (one row per region with ten metric columns would not).
    """
    from rich.table import Table

    table = Table(
        title=f"{summary['cases']} cases · challenge {summary['challenge'].upper()}",
        caption="cells: mean / median over cases",
    )
    table.add_column("metric")
    regions = summary["regions"]
    names = list(regions) or list(REGIONS)  # WT/TC/ET, or a profile's regions
    for r in names:
        table.add_column(r.upper(), justify="right", no_wrap=True)
    for key, label, digits in TABLE_METRICS:
        cells = [
            f"{regions[r][key]['mean']:.{digits}f} / {regions[r][key]['median']:.{digits}f}"
            for r in names
        ]
        table.add_row(label, *cells)
    table.add_row(
        "lesions TP/FP/FN",
        *(f"{regions[r]['tp']}/{regions[r]['fp']}/{regions[r]['fn']}" for r in names),
    )
    return table


def print_summary(summary: dict, console=None) -> None:
    """:func:`summary_table` on stdout (or ``console``), then the cases without a prediction
    and those that could not be scored (their files and reasons go to stderr, from the CLI)."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    console.print(summary_table(summary))
    if summary.get("missing_predictions"):
        missing = escape(", ".join(summary["missing_predictions"]))
        console.print(f"[yellow]no prediction (scored as empty): {missing}")
    if summary.get("failed"):
        failed = escape(", ".join(f["case"] for f in summary["failed"]))
        console.print(f"[red]not scored (unreadable or invalid files): {failed}")


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
