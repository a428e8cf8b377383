"""The runs view `bratslab ui` opens on: which metric columns, and the shared-view tag MLflow's UI
reads (a real SQLite tracking store)."""

from __future__ import annotations

import json

from bratslab.tracking import mlflow_runs
from bratslab.tracking.ui_view import (
    SHARE_TAG_PREFIX,
    VIEW_KEY,
    key_metrics,
    runs_page,
    write_views,
)


def test_key_metrics_puts_means_first_then_each_region_in_reading_order():
    logged = [
        "train/loss",
        "time/epoch_s",
        "val/dice_et",
        "val/dice_wt",
        "best/val/dice_tc",
        "best/val/dice_wt",
        "best/val/dice_et",
        "best/val/dice_mean",
        "best/val/lesion_dice_mean",
        "val/lesion_dice_et",
        "val/lesion_dice_wt",
        "val/lesion_dice_tc",
        "val/lesion_dice_mean",
        "tta/dice_mean",
        "tta/lesion_dice_mean",
        "tta/lesion_dice_tc",
        "tta/lesion_dice_wt",
        "tta/dice_wt",
        "tta/hd95_wt",
        "best/tta/dice_mean",
        "best/tta/lesion_dice_mean",
        "best/tta/lesion_dice_wt",
    ]
    assert key_metrics(logged) == [
        "best/tta/lesion_dice_mean",
        "best/tta/dice_mean",
        "tta/lesion_dice_mean",
        "tta/dice_mean",
        "best/val/lesion_dice_mean",
        "best/val/dice_mean",
        "tta/lesion_dice_wt",
        "tta/lesion_dice_tc",
        "tta/dice_wt",
        "val/lesion_dice_wt",
        "val/lesion_dice_tc",
        "val/lesion_dice_et",
        "best/val/dice_wt",
        "best/val/dice_tc",
        "best/val/dice_et",
    ]


def test_key_metrics_orders_post_treatment_regions_and_keeps_unknown_ones_last():
    logged = [f"best/val/dice_{r}" for r in ("snfh", "rc", "zz", "netc", "et", "tc", "wt")]
    assert key_metrics(logged) == [
        f"best/val/dice_{r}" for r in ("wt", "tc", "et", "rc", "netc", "snfh", "zz")
    ]
    assert key_metrics(["train/loss", "time/val_s"]) == []
    # Runs without best/ keys (no epoch validated yet, older runs) show the last validation's.
    assert key_metrics(["val/dice_mean", "val/dice_tc", "val/dice_wt"]) == [
        "val/dice_mean",
        "val/dice_wt",
        "val/dice_tc",
    ]


def test_each_experiment_with_runs_gets_a_view_of_its_own_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    c = mlflow_runs.client()
    sweep = c.create_experiment("sweep-a")
    train = c.create_experiment("train-b")
    empty = c.create_experiment("nothing-yet")
    for exp, metrics in (
        (sweep, {"tta/lesion_dice_mean": 0.7, "tta/dice_wt": 0.9, "val/lesion_dice_wt": 0.6}),
        (sweep, {"best/val/dice_mean": 0.8}),
        (train, {"best/val/dice_wt": 0.9, "train/loss": 0.3}),
    ):
        run = c.create_run(exp)
        for k, v in metrics.items():
            c.log_metric(run.info.run_id, k, v)

    written = write_views(c)
    assert written == {
        sweep: ["tta/lesion_dice_mean", "best/val/dice_mean", "tta/dice_wt", "val/lesion_dice_wt"],
        train: ["best/val/dice_wt"],
    }
    tag = c.get_experiment(sweep).tags[SHARE_TAG_PREFIX + VIEW_KEY]
    state = json.loads(tag)
    # MLflow's canonical column keys: `type.`name`` (backticks around names with slashes).
    assert state["selectedColumns"][-4:] == [
        "metrics.`tta/lesion_dice_mean`",
        "metrics.`best/val/dice_mean`",
        "metrics.`tta/dice_wt`",
        "metrics.`val/lesion_dice_wt`",
    ]
    assert "attributes.`Models`" in state["selectedColumns"]
    assert SHARE_TAG_PREFIX + VIEW_KEY not in c.get_experiment(empty).tags

    # A later run's new metric shows up the next time; an unchanged view is not rewritten.
    run = c.create_run(train)
    c.log_metric(run.info.run_id, "best/val/lesion_dice_mean", 0.5)
    assert write_views(c)[train] == ["best/val/lesion_dice_mean", "best/val/dice_wt"]
    assert runs_page("http://127.0.0.1:5000", train) == (
        f"http://127.0.0.1:5000/#/experiments/{train}/runs?viewStateShareKey={VIEW_KEY}"
        "&workflowType=machine_learning"
    )
