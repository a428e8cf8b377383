"""A sweep stopped during its TTA re-evaluation does not redo, on --resume, the re-evaluations
that had finished: each is recorded on its trial's run (real MLflow on SQLite)."""

from __future__ import annotations

import pytest

from bratslab.tune.trial_result import TrialResult


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from bratslab.tracking import mlflow_runs

    return [mlflow_runs.start_run(experiment="sw", run_name=f"t{i}") for i in range(2)]


class Evaluation:
    """What ``evaluate_model`` does to a trial's run (tta/* metrics logged at the checkpoint's
    epoch), counted; ``stop_after`` raises as a signal would in the middle of the next one."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.challenges: list[str] = []
        self.stop_after = stop_after

    def __call__(self, ckpt, store, fold, tta, *, run_id, log_to_mlflow, challenge):
        from bratslab.shutdown import Terminated
        from bratslab.tracking import mlflow_runs

        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise Terminated(15)
        self.calls.append(ckpt)
        self.challenges.append(challenge)
        metrics = {"tta/dice_mean": 0.5 + len(ckpt) / 100, "tta/hd95_mean": 3.0, "pp/dice_et": 0.4}
        mlflow_runs.log_metrics(run_id, metrics, 1)
        return metrics


def _candidates(runs):
    return [
        TrialResult(
            trial_id=f"t{i}",
            status="TERMINATED",
            completed=True,
            iterations=2,
            best_metric=0.5,
            best_checkpoint=f"/sw/train/t{i}/epoch{'0' * i}2",
            params={},
            mlflow_run_id=run,
        )  # fmt: skip
        for i, run in enumerate(runs)
    ]


def test_finished_re_evaluations_are_kept_across_a_stop(runs):
    from bratslab.shutdown import Terminated
    from bratslab.tune.selection import TTA_DONE_TAG, evaluate_candidates

    # Stopped while the second candidate is evaluated: the first one's result is recorded.
    first = Evaluation(stop_after=1)
    with pytest.raises(Terminated):
        evaluate_candidates(_candidates(runs), "/store", 0, "flips", evaluate=first)
    assert first.calls == ["/sw/train/t0/epoch2"]

    resumed = Evaluation()
    done = evaluate_candidates(_candidates(runs), "/store", 0, "flips", evaluate=resumed)
    assert resumed.calls == ["/sw/train/t1/epoch02"]  # only the one that had not finished
    # The first one's metrics come back from its run as the evaluation returned them.
    expected = {"tta/dice_mean": 0.5 + len("/sw/train/t0/epoch2") / 100, "tta/hd95_mean": 3.0}
    assert done[0].tta == pytest.approx({**expected, "tta/pp/dice_et": 0.4})
    assert set(done[1].tta) == set(done[0].tta)

    # Another TTA (or fold, or checkpoint) is another re-evaluation: done again.
    again = Evaluation()
    evaluate_candidates(_candidates(runs), "/store", 0, "flips+rot90", evaluate=again)
    assert len(again.calls) == 2
    from bratslab.tracking.mlflow_runs import run_info

    assert run_info(runs[0])["tags"][TTA_DONE_TAG] == "flips+rot90 | fold 0 | /sw/train/t0/epoch2"
    # so is another lesion-wise metric: the trials' val_lesionwise reaches the evaluation
    pan = Evaluation()
    evaluate_candidates(
        _candidates(runs), "/store", 0, "flips+rot90", evaluate=pan, lesionwise="panoptica"
    )
    assert len(pan.calls) == 2 and pan.challenges == ["panoptica"] * 2
    assert again.challenges == ["gli"] * 2
