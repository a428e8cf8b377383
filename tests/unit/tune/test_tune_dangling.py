"""A sweep driver killed just after starting a trial leaves it RUNNING in Optuna and MLflow;
once the resumed sweep's Tune experiment has finished, those are closed (real Optuna + MLflow
on SQLite)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from bratslab.shutdown import STOP_REASON_TAG


@pytest.fixture()
def stores(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _study(url: str, name: str) -> optuna.Study:
    from bratslab.tune.optuna_storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")


def test_running_trials_and_child_runs_of_a_dead_driver_are_closed(stores):
    from bratslab.tracking import mlflow_runs
    from bratslab.tune.dangling import DRIVER_LOST, close_dangling

    url = f"sqlite:///{stores / 'optuna.db'}"
    study = _study(url, "sw")
    done = study.ask()
    study.tell(done, 0.7)
    lost = study.ask()  # asked by the dead driver, never told
    parent = mlflow_runs.start_run(experiment="sw", run_name="sw")
    finished = mlflow_runs.start_run(experiment="sw", run_name="t0", parent_run_id=parent)
    mlflow_runs.end_run(finished, "FINISHED")
    left = mlflow_runs.start_run(experiment="sw", run_name="t1", parent_run_id=parent)
    other = mlflow_runs.start_run(experiment="sw", run_name="not-a-child")

    closed = close_dangling(url, "sw", parent)

    assert closed.optuna_trials == (lost.number,)
    assert closed.mlflow_runs == (left,)
    states = {t.number: t.state for t in optuna.load_study(study_name="sw", storage=url).trials}
    assert states == {done.number: TrialState.COMPLETE, lost.number: TrialState.FAIL}
    info = mlflow_runs.run_info(left)
    assert info["status"] == "KILLED" and info["tags"][STOP_REASON_TAG] == DRIVER_LOST
    assert mlflow_runs.run_info(finished)["status"] == "FINISHED"
    assert mlflow_runs.run_info(parent)["status"] == "RUNNING"  # the sweep itself goes on
    assert mlflow_runs.run_info(other)["status"] == "RUNNING"  # not this sweep's
    assert close_dangling(url, "sw", parent) == type(closed)((), ())  # nothing left


def test_a_sweep_without_a_study_closes_nothing(stores):
    from bratslab.tracking import mlflow_runs
    from bratslab.tune.dangling import close_dangling

    parent = mlflow_runs.start_run(experiment="sw2", run_name="sw2")
    closed = close_dangling(f"sqlite:///{stores / 'optuna.db'}", "never-asked", parent)
    assert closed.optuna_trials == () and closed.mlflow_runs == ()


def test_trial_runs_are_found_through_mlflow_when_the_run_folder_is_on_another_node(stores):
    """With an s3:// Ray storage a trial's run-state file is on the node that ran it: the
    sweep driver then finds the trial's run among its MLflow children by trial id."""
    import json

    from bratslab.tracking import mlflow_runs
    from bratslab.train.run_storage import RUN_STATE
    from bratslab.tune.sweep_paths import SweepPaths
    from bratslab.tune.sweep_run import _attach_run_ids
    from bratslab.tune.trial import TRIAL_ID_TAG
    from bratslab.tune.trial_result import TrialResult

    parent = mlflow_runs.start_run(experiment="sw", run_name="sw")
    remote = mlflow_runs.start_run(
        experiment="sw", run_name="sw-b", parent_run_id=parent, tags={TRIAL_ID_TAG: "b"}
    )
    mlflow_runs.start_run(experiment="sw", run_name="x", tags={TRIAL_ID_TAG: "c"})  # not a child
    paths = SweepPaths(stores / "sweeps" / "sw")
    local = paths.experiment.trial_run_dir("sw-a") / RUN_STATE
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps({"mlflow_run_id": "from-the-file"}))
    rows = [TrialResult("a"), TrialResult("b"), TrialResult("c")]

    _attach_run_ids(rows, paths, "sw", parent)

    assert [r.mlflow_run_id for r in rows] == ["from-the-file", remote, None]
    assert mlflow_runs.children_by_tag(parent, TRIAL_ID_TAG) == {"b": remote}
