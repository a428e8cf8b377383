"""What a Ray Train run costs besides the step (issue 17), checked without starting Ray: the
MLflow callback opens the store when the controller unpickles it and logs one batch per epoch
(metrics and the worker-node tag together); the thread loader's case table reaches each worker
as its ``rows[rank::world]`` of the loop config, with no Ray Data dataset."""

from __future__ import annotations

import pytest
from ray import cloudpickle as pickle  # what Ray ships callbacks with

from bratslab.tracking import mlflow_runs
from bratslab.train.logged_metrics import NODE_IP_KEY, WORKER_NODES_TAG
from bratslab.train.loop import train_shard
from bratslab.train.mlflow_callback import MLflowCallback


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One store for the logging tests (creating a SQLite schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _report(epoch: int, loss: float, **extra) -> dict:
    return {"epoch": epoch, "train/loss": loss, "val/fresh": 0, "val/dice_mean": 0.5, **extra}


def test_unpickling_the_callback_opens_the_store_before_any_report(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shipped = pickle.dumps(MLflowCallback("run", uri))  # what the driver sends the controller
    assert uri not in mlflow_runs._SCHEMA_READY
    pickle.loads(shipped)  # the controller, while it starts
    assert uri in mlflow_runs._SCHEMA_READY


def test_a_cold_callback_leaves_the_store_for_the_first_report(tmp_path):
    cold_uri = f"sqlite:///{tmp_path / 'cold.db'}"
    pickle.loads(pickle.dumps(MLflowCallback("run", cold_uri, warm=False)))
    assert cold_uri not in mlflow_runs._SCHEMA_READY


def test_an_unreachable_store_does_not_stop_the_controller(tmp_path, caplog):
    bad = f"sqlite:///{tmp_path / 'missing' / 'x' / 'mlflow.db'}"
    (tmp_path / "missing").write_text("a file where a folder should be")
    cb = pickle.loads(pickle.dumps(MLflowCallback("run", bad)))
    assert cb.run_id == "run"
    assert "not ready at controller start" in caplog.text


def test_each_report_is_one_epoch_of_metrics_with_the_node_tag_once(uri):
    run_id = mlflow_runs.start_run(experiment="costs", run_name="r", uri=uri)
    cb = pickle.loads(pickle.dumps(MLflowCallback(run_id, uri)))
    ranks = [_report(0, 0.9, **{NODE_IP_KEY: "10.0.0.1"}), _report(0, 0.8)]
    cb.after_report(None, ranks, None)
    cb.after_report(None, [_report(1, 0.7, **{NODE_IP_KEY: "10.0.0.9"}), _report(1, 0.6)], None)
    info = mlflow_runs.run_info(run_id, uri)
    assert info["tags"][WORKER_NODES_TAG] == "0=10.0.0.1,1=?"  # the first attempt's
    assert mlflow_runs.metric_history(run_id, "train/loss", uri) == [(0, 0.9), (1, 0.7)]
    assert "val/dice_mean" not in info["metrics"]  # not measured in these epochs


def test_log_metrics_writes_tags_alone_and_skips_non_numbers(uri):
    run_id = mlflow_runs.start_run(experiment="costs", run_name="t", uri=uri)
    mlflow_runs.log_metrics(run_id, {"ip": "10.0.0.1", "ok": True}, 0, uri, tags={"k": "v"})
    info = mlflow_runs.run_info(run_id, uri)
    assert info["tags"]["k"] == "v"
    assert info["metrics"] == {}


def test_the_case_table_is_split_by_rank_without_ray_data():
    rows = [{"case_id": f"c{i}"} for i in range(7)]
    shards = [train_shard({"train_rows": rows}, rank, 3) for rank in range(3)]
    assert [[r["case_id"] for r in s] for s in shards] == [
        ["c0", "c3", "c6"],
        ["c1", "c4"],
        ["c2", "c5"],
    ]
    assert train_shard({"train_rows": rows[:1]}, 1, 2) == []  # epoch_batches then says why
