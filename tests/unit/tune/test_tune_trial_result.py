"""`TrialResult`: the typed row of a sweep's results, its JSON form and its checks."""

from __future__ import annotations

import json

import pytest

from bratslab.tune.trial_result import TrialResult


def _full() -> TrialResult:
    return TrialResult(
        trial_id="a1b2",
        status="STOPPED_EARLY",
        completed=True,
        iterations=3,
        best_metric=0.71,
        best_checkpoint="/ckpt/a1b2",
        params={"model.arch": "unet", "training.optimizer.lr": 0.003},
        error=None,
        mlflow_run_id="run9",
        tta={"tta/dice_mean": 0.7},
    )


def test_json_round_trip_keeps_every_field():
    row = _full()
    data = json.loads(json.dumps(row.to_dict()))
    assert data["status"] == "STOPPED_EARLY" and data["tta"] == {"tta/dice_mean": 0.7}
    back = TrialResult.from_dict(data)
    assert back == row
    back.params["model.arch"] = "segresnet"  # no aliasing between the copies
    assert row.params["model.arch"] == "unet"


def test_defaults_of_a_trial_that_never_reported():
    row = TrialResult.from_dict({"trial_id": "x"})
    assert (row.status, row.completed, row.iterations) == ("TERMINATED", False, 0)
    assert row.best_metric is None and row.params == {} and row.tta == {}


def test_bad_rows_are_rejected():
    with pytest.raises(ValueError, match="status 'DONE' is not one of"):
        TrialResult("x", status="DONE")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['best'\]"):
        TrialResult.from_dict({"trial_id": "x", "best": 1.0})
    with pytest.raises(ValueError, match="`trial_id` is missing"):
        TrialResult.from_dict({"status": "ERROR"})
