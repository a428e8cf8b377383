"""A FINISHED run is never reopened by a rerun of its name (real MLflow on SQLite): the same
job is its recorded outcome, another job is refused with what differs."""

from __future__ import annotations

import json

import pytest

from bratslab.config import ConfigError


@pytest.fixture()
def finished(tmp_path, monkeypatch):
    """A run folder's state file pointing at a FINISHED MLflow run with its params."""
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from bratslab.tracking import mlflow_runs

    params = {"training": {"epochs": 2, "optimizer": {"lr": 0.003}}, "name": "r"}
    run_id = mlflow_runs.start_run(experiment="e", run_name="r", params=params)
    mlflow_runs.set_tags(run_id, {"bratslab.model_uri": "models:/m-abc"})
    mlflow_runs.end_run(run_id, "FINISHED")
    state = tmp_path / "ray_results" / "r" / "bratslab_run.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"mlflow_run_id": run_id, "job": "r"}))
    return state, params, run_id


def test_the_same_job_again_is_the_finished_run(finished):
    from bratslab.tracking.mlflow_runs import run_info
    from bratslab.train.rerun import finished_run

    state, params, run_id = finished
    assert finished_run(state, params, "r") == run_id
    assert run_info(run_id)["status"] == "FINISHED"


def test_another_job_under_a_finished_name_is_refused_and_the_run_untouched(finished):
    from bratslab.tracking.mlflow_runs import run_info
    from bratslab.train.rerun import finished_run

    state, params, run_id = finished
    more = {**params, "training": {"epochs": 5, "optimizer": {"lr": 0.003}}}
    with pytest.raises(ConfigError) as e:
        finished_run(state, more, "r")
    text = str(e.value)
    assert f"run 'r' already FINISHED (MLflow run {run_id})" in text
    assert "training.epochs 2 -> 5" in text and "model.init_from=models:/m-abc" in text
    assert run_info(run_id)["status"] == "FINISHED"


def test_runs_to_resume_are_not_finished_ones(finished, tmp_path):
    from bratslab.tracking import mlflow_runs
    from bratslab.train.rerun import finished_run

    state, params, run_id = finished
    assert finished_run(tmp_path / "none.json", params, "r") is None  # never ran
    for status in ("KILLED", "FAILED"):  # stopped or failed: the rerun resumes it
        mlflow_runs.client().update_run(run_id, status=status)
        assert finished_run(state, {**params, "x": 1}, "r") is None


def test_the_job_that_finished_the_run_is_the_one_compared(finished):
    """A run resumed with another job (here more restarts allowed) keeps the params its first
    attempt logged; rerunning the command that finished it is still the same job."""
    from bratslab.tracking.mlflow_runs import flatten
    from bratslab.train.rerun import finished_run

    state, params, run_id = finished
    last = {**params, "scaling": {"max_failures": 2}}
    recorded = json.loads(state.read_text())
    state.write_text(json.dumps({**recorded, "params": flatten(last)}))
    assert finished_run(state, last, "r") == run_id
    with pytest.raises(ConfigError, match="scaling.max_failures 2 -> 0"):
        finished_run(state, {**params, "scaling": {"max_failures": 0}}, "r")
