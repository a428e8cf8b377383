"""A job's config as MLflow params: every key MLflow accepts, including a learning-rate split
whose group names are shell patterns (``group_lr: {"enc*": 1e-4}``), which MLflow refuses as
param names; such a mapping is logged as one param holding its JSON text."""

from __future__ import annotations

import json
from pathlib import Path

from bratslab.jobs.spec import load_job
from bratslab.tracking import mlflow_runs


def test_a_mapping_with_pattern_keys_is_one_json_param():
    flat = mlflow_runs.flatten(
        {"optimizer": {"lr": 0.001, "group_lr": {"stem": 1e-4, "enc*": 2e-4}}, "x": {"a": 1}}
    )
    assert flat["optimizer.lr"] == "0.001"
    assert json.loads(flat["optimizer.group_lr"]) == {"stem": 1e-4, "enc*": 2e-4}
    assert flat["x.a"] == "1"  # plain names stay dotted
    assert mlflow_runs.flatten({"g": {"stem": 1e-4}}) == {"g.stem": "0.0001"}


def test_the_ssa_finetune_job_logs_its_params_to_a_real_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_job(
        Path(__file__).resolve().parents[3] / "jobs" / "ssa_cpu.yaml", ["model.init_from=null"]
    )
    run_id = mlflow_runs.start_run(
        experiment="params", run_name="ssa", params=spec.model_dump(mode="json"), uri=uri
    )
    params = mlflow_runs.run_info(run_id, uri=uri)["params"]
    assert json.loads(params["training.optimizer.group_lr"]) == {"stem": 1e-4, "enc*": 1e-4}
    assert params["training.val_lesionwise"] == "ssa"
