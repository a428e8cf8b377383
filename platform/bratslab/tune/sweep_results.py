"""A sweep's results table (CSV) and Optuna plots (optimisation history, parameter importances).

Both are written atomically into the sweep folder and uploaded to the sweep's parent MLflow run.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from bratslab import atomic
from bratslab.tune.trial_result import TrialResult

log = logging.getLogger(__name__)

FIRST_COLUMNS = (
    "trial_id",
    "status",
    "completed",
    "iterations",
    "best_metric",
    "mlflow_run_id",
    "best_checkpoint",
)


def results_table(rows: list[TrialResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """Flatten trial results into CSV columns: fixed columns, ``tta/*`` metrics, then params.

    Args:
        rows: as produced by :func:`bratslab.tune.tuner.trial_rows` (the sweep adds
            ``mlflow_run_id``, the selection ``tta``).
    """
    flat = []
    for r in rows:
        item: dict[str, Any] = {k: getattr(r, k) for k in FIRST_COLUMNS}
        item.update(r.tta)
        item.update({f"param:{k}": v for k, v in r.params.items()})
        if r.error:
            item["error"] = r.error
        flat.append(item)
    extra = sorted({k for item in flat for k in item} - set(FIRST_COLUMNS))
    tta = [k for k in extra if k.startswith("tta/")]
    rest = [k for k in extra if not k.startswith("tta/")]
    return [*FIRST_COLUMNS, *tta, *rest], flat


def write_results_csv(path: Path, rows: list[TrialResult]) -> Path:
    """Write the results table to ``path`` (atomically)."""
    columns, flat = results_table(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for item in flat:
        writer.writerow({k: ("" if item.get(k) is None else item.get(k)) for k in columns})
    atomic.write_text(path, buf.getvalue())
    return path


def optuna_plots(storage_url: str, study_name: str, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances of the study, as PNGs in ``out_dir``.

    A plot that cannot be drawn (e.g. importances need two finished trials whose parameters
    vary) is skipped with a log message rather than failing the sweep.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: list[Path] = []
    plots = {
        "optuna_history.png": ovm.plot_optimization_history,
        "optuna_importances.png": ovm.plot_param_importances,
    }
    for filename, plot in plots.items():
        if not complete:
            log.warning("no completed Optuna trials: %s skipped", filename)
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notices of optuna.visualization
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            plt.close(fig)
            atomic.write_bytes(out_dir / filename, buf.getvalue())
            out.append(out_dir / filename)
        except Exception as e:  # a missing plot must not fail a finished sweep
            log.warning("Optuna plot %s skipped: %s", filename, e)
    return out
