"""The learning-curve plot of a training run (train/loss and val/dice_mean per epoch)."""

from __future__ import annotations

from pathlib import Path

from bratslab.tracking.mlflow_runs import metric_history


def learning_curve(run_id: str, out_png: Path) -> Path:
    """Plot train/loss and val/dice_mean per epoch (from MLflow's history) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss = metric_history(run_id, "train/loss")
    dice = metric_history(run_id, "val/dice_mean")
    # MLflow steps are 0-based epochs; the plot counts from 1, as the console does.
    if loss:
        ax1.plot([s + 1 for s, _ in loss], [v for _, v in loss], "o-", color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("train/loss", color="tab:blue")
    ax2 = ax1.twinx()
    if dice:
        ax2.plot([s + 1 for s, _ in dice], [v for _, v in dice], "s-", color="tab:red")
    ax2.set_ylabel("val/dice_mean", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
