"""Cross-validation driver (``train --folds``): fold selection, the parent run's metrics and
status, resuming without retraining finished folds, and SIGTERM. The per-fold trainer is a
stand-in that records a real MLflow run the way ``run_training`` does (the real one is
exercised by ``tests/integration/test_cv_ensemble.py``)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from bratslab.config import ConfigError
from bratslab.train.folds import FoldsFailed, parse_folds, run_cv

JOB = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"
DICE = {0: (0.2, 0.6), 1: (0.3, 0.8), 2: (0.1, 0.5)}  # fold → (epoch 0, best epoch 1) Dice


@pytest.mark.parametrize(
    ("text", "folds"), [("all", [0, 1, 2, 3]), ("0,2", [0, 2]), (" 3, 1 ", [1, 3]), ("0", [0])]
)
def test_fold_selection(text, folds):
    assert parse_folds(text, 4) == folds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "expected 'all' or fold numbers"),
        ("", "expected 'all' or fold numbers"),
        ("0,,1", "expected 'all' or fold numbers"),
        ("-1", "expected 'all' or fold numbers"),
        ("1.5", "expected 'all' or fold numbers"),
        ("4", "fold(s) [4] out of range; the store has 4 folds (0..3)"),
        ("1,1", "named twice"),
    ],
)
def test_bad_fold_selections_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_folds(text, 4)
    assert message in str(err.value) and "--folds" in str(err.value)


@pytest.mark.parametrize("folds", ["7", "zero", "0,0"])
def test_train_cli_exits_2_on_a_bad_fold_selection_before_creating_anything(
    tiny_store, tmp_path, monkeypatch, folds
):
    from bratslab.app.main import app

    home = tmp_path / "home"
    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    r = CliRunner().invoke(app, ["train", str(JOB), "--set", f"data.store={tiny_store}",
                                 "--folds", folds])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert str(JOB) in r.stderr and "--folds" in r.stderr
    assert not (home / "ray_results").exists()


@pytest.fixture
def cv_env(tiny_store, tmp_path, monkeypatch):
    """A fresh MLflow store and the smoke job on the tiny store (4 folds)."""
    from bratslab.jobs.spec import load_job

    home = tmp_path / "home"
    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    return load_job(JOB, [f"data.store={tiny_store}"]), home / "ray_results"


class FakeTraining:
    """Stands in for ``run_training``: one MLflow run per call, nested under the parent, with
    val metrics at epochs 0 and 1, the best at epoch 1, and its state file (as the trainer
    writes it); fails for the folds in ``fail``."""

    def __init__(self, fail=(), hold_s: float = 0.0, on_start=None):
        self.calls: list[str] = []
        self.fail, self.hold_s, self.on_start = set(fail), hold_s, on_start

    def __call__(self, spec, *, name, parent_run_id, storage_path, progress):
        from bratslab.tracking import mlflow_runs
        from bratslab.train.run_storage import RUN_STATE

        self.calls.append(name)
        k = spec.data.fold
        run_id = mlflow_runs.start_run(
            experiment=spec.tracking.experiment,
            run_name=name,
            params={"data": {"fold": k}},
            parent_run_id=parent_run_id,
        )
        (Path(storage_path) / name).mkdir(parents=True, exist_ok=True)
        (Path(storage_path) / name / RUN_STATE).write_text(json.dumps({"mlflow_run_id": run_id}))
        if self.on_start:
            self.on_start(k)
        time.sleep(self.hold_s)
        if k in self.fail:
            mlflow_runs.end_run(run_id, "FAILED")
            raise RuntimeError(f"fold {k} broke")
        for epoch, dice in enumerate(DICE[k]):
            mlflow_runs.log_metrics(
                run_id, {"val/dice_mean": dice, "val/lesion_dice_mean": dice / 2,
                         "val/dice_wt": dice + 0.1}, epoch)  # fmt: skip
        mlflow_runs.log_metrics(run_id, {"best/val/dice_mean": DICE[k][1]}, 1)
        mlflow_runs.end_run(run_id, "FINISHED")
        return SimpleNamespace(run_id=run_id)


def test_the_parent_logs_each_folds_best_epoch_and_the_mean_and_std(cv_env):
    from bratslab.tracking.mlflow_runs import run_info

    spec, root = cv_env
    train = FakeTraining()
    out = run_cv(spec, [0, 1, 2], name="cv", storage_path=root, train_fn=train, progress=False)
    assert train.calls == ["cv-fold0", "cv-fold1", "cv-fold2"]
    parent = run_info(out.parent_run_id)
    m = parent["metrics"]
    assert parent["status"] == "FINISHED"
    assert (
        parent["tags"]["bratslab.kind"] == "cv" and parent["tags"]["bratslab.cv.folds"] == "0,1,2"
    )
    assert m["cv/fold1/val/dice_mean"] == pytest.approx(0.8)  # the best epoch, not the last
    assert m["cv/fold1/val/lesion_dice_mean"] == pytest.approx(0.4)
    assert m["cv/fold2/val/dice_wt"] == pytest.approx(0.6)
    assert m["cv/mean/val/dice_mean"] == pytest.approx((0.6 + 0.8 + 0.5) / 3)
    assert m["cv/std/val/dice_mean"] == pytest.approx(0.1527525, abs=1e-6)  # n-1
    for r in out.results:
        assert run_info(r.run_id)["tags"]["mlflow.parentRunId"] == out.parent_run_id


def test_a_failed_fold_fails_the_parent_and_a_rerun_trains_only_the_unfinished_one(cv_env):
    from bratslab.tracking.mlflow_runs import run_info

    spec, root = cv_env
    with pytest.raises(FoldsFailed, match="fold 1 .*broke") as err:
        run_cv(spec, [0, 1], name="cv", storage_path=root, train_fn=FakeTraining(fail={1}))
    first = err.value.outcome
    parent = run_info(first.parent_run_id)
    assert parent["status"] == "FAILED"
    assert parent["metrics"]["cv/fold0/val/dice_mean"] == pytest.approx(0.6)  # kept
    assert not any(k.startswith("cv/mean/") for k in parent["metrics"])
    assert run_info(first.results[0].run_id)["status"] == "FINISHED"

    again = FakeTraining()
    out = run_cv(spec, [0, 1], name="cv", storage_path=root, train_fn=again)
    assert again.calls == ["cv-fold1"]  # fold 0 finished before: not retrained
    assert out.parent_run_id == first.parent_run_id
    assert [r.status for r in out.results] == ["finished-before", "trained"]
    parent = run_info(out.parent_run_id)
    assert parent["status"] == "FINISHED"
    assert parent["metrics"]["cv/mean/val/dice_mean"] == pytest.approx(0.7)


def test_folds_run_concurrently_with_max_parallel(cv_env):
    spec, root = cv_env
    starts: dict[int, float] = {}
    train = FakeTraining(hold_s=1.0, on_start=lambda k: starts.setdefault(k, time.monotonic()))
    out = run_cv(spec, [0, 1], name="cvp", storage_path=root, train_fn=train, max_parallel=2)
    assert sorted(train.calls) == ["cvp-fold0", "cvp-fold1"]
    assert abs(starts[0] - starts[1]) < 1.0  # both held at once
    assert [r.fold for r in out.results] == [0, 1]


def test_sigterm_marks_the_parent_and_running_folds_killed_with_the_reason(cv_env):
    from bratslab.shutdown import Terminated
    from bratslab.tracking.mlflow_runs import run_info

    spec, root = cv_env
    started: list[int] = []

    def signal_once_both_run(k: int) -> None:
        started.append(k)
        if len(started) == 2:  # one signal, while both folds' runs are RUNNING
            os.kill(os.getpid(), signal.SIGTERM)

    train = FakeTraining(hold_s=3.0, on_start=signal_once_both_run)
    with pytest.raises(Terminated):
        run_cv(spec, [0, 1], name="cvk", storage_path=root, train_fn=train, max_parallel=2)
    state = json.loads((root / "cvk-cv" / "bratslab_cv.json").read_text())
    parent = run_info(state["mlflow_run_id"])
    assert parent["status"] == "KILLED" and parent["tags"]["bratslab.stop_reason"] == "SIGTERM"
    for name in ("cvk-fold0", "cvk-fold1"):
        state = json.loads((root / name / "bratslab_run.json").read_text())
        fold = run_info(state["mlflow_run_id"])
        assert fold["status"] == "KILLED" and fold["tags"]["bratslab.stop_reason"] == "SIGTERM"
