"""How a finished sweep's trials end in MLflow (real MLflow on SQLite): a trial ASHA pruned is
FINISHED with its stop reason and epoch, not KILLED as if its driver had died; a crashed trial
is FAILED with why; the sweep's tally counts each kind."""

from __future__ import annotations

import pytest

from bratslab.shutdown import STOP_REASON_TAG


@pytest.fixture()
def stores(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_pruned_trials_finish_and_crashed_ones_fail_with_their_reason(stores):
    from bratslab.tracking import mlflow_runs
    from bratslab.tune.dangling import close_dangling
    from bratslab.tune.trial_result import TrialResult
    from bratslab.tune.trial_states import PRUNED, PRUNED_AT_TAG, settle_trial_runs, tally_line

    parent = mlflow_runs.start_run(experiment="sw", run_name="sw")
    runs = {
        t: mlflow_runs.start_run(experiment="sw", run_name=t, parent_run_id=parent)
        for t in ("full", "pruned", "crashed", "raised")
    }
    # Killed mid-fit by ASHA / by the OOM killer: both still RUNNING. "raised" was closed by
    # the train stage itself.
    mlflow_runs.end_run(runs["full"], "FINISHED")
    mlflow_runs.end_run(runs["raised"], "FAILED")
    rows = [
        TrialResult("full", completed=True, iterations=3, mlflow_run_id=runs["full"]),
        TrialResult("pruned", completed=True, iterations=1, mlflow_run_id=runs["pruned"]),
        TrialResult(
            "crashed", status="ERROR", iterations=2, error="ActorDiedError: oom\nmore",
            mlflow_run_id=runs["crashed"],
        ),
        TrialResult("raised", status="ERROR", iterations=1, mlflow_run_id=runs["raised"]),
    ]  # fmt: skip

    settle_trial_runs(rows, lambda r: 3)
    assert close_dangling(f"sqlite:///{stores / 'optuna.db'}", "sw", parent).mlflow_runs == ()

    info = {t: mlflow_runs.run_info(r) for t, r in runs.items()}
    assert {t: i["status"] for t, i in info.items()} == {
        "full": "FINISHED",
        "pruned": "FINISHED",
        "crashed": "FAILED",
        "raised": "FAILED",
    }
    assert info["pruned"]["tags"][STOP_REASON_TAG] == PRUNED
    assert info["pruned"]["tags"][PRUNED_AT_TAG] == "1"
    assert STOP_REASON_TAG not in info["full"]["tags"]
    assert info["crashed"]["tags"][STOP_REASON_TAG] == "crashed: ActorDiedError: oom"
    assert [r.status for r in rows] == ["TERMINATED", "STOPPED_EARLY", "ERROR", "ERROR"]
    assert tally_line(rows) == "4 trials: 1 completed, 1 pruned by ASHA, 2 failed"


def test_tally_counts_unfinished_trials():
    from bratslab.tune.trial_result import TrialResult
    from bratslab.tune.trial_states import tally

    rows = [TrialResult("a", completed=True), TrialResult("b")]
    assert tally(rows) == {"completed": 1, "pruned": 0, "failed": 0, "unfinished": 1}
