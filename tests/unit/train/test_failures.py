"""How a training run fails: bounded restarts, permanent checkpoint errors, one-line causes.

Ray Train's own exception classes are built here as the controller builds them (no Ray
instance is needed for that); the run-level behaviour is tested in
``tests/integration/test_train_ray.py``.
"""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from bratslab.train.checkpoint import CheckpointUnusable, load_train_state, resuming_from


def _user_error(exc: BaseException):
    """A worker's exception as Ray Train 2.60 hands it to the controller."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    return UserExceptionWithTraceback(exc, traceback_str="Traceback (most recent call last): ...")


def test_restarts_are_bounded_in_start_up_as_in_training(monkeypatch):
    from bratslab.train.failures import START_TIMEOUT_ENV, START_TIMEOUT_S, failure_config

    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    cfg = failure_config(2)
    assert cfg.max_failures == 2 and cfg.controller_failure_limit == 2
    # A worker group waiting for resources counts as a start-up failure only after this long.
    assert os.environ[START_TIMEOUT_ENV] == str(START_TIMEOUT_S)
    assert failure_config(-1).controller_failure_limit == -1  # the user asked for unbounded
    monkeypatch.setenv(START_TIMEOUT_ENV, "30")
    failure_config(0)
    assert os.environ[START_TIMEOUT_ENV] == "30"  # the user's setting wins


def test_a_refused_checkpoint_is_unusable_and_names_its_folder(tmp_path):
    # A train_state.pt that weights-only loading refuses (an arbitrary pickled object).
    torch.save({"epoch": argparse.Namespace(x=1)}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointUnusable) as e, resuming_from("/runs/r/epoch0002-ab"):
        load_train_state(tmp_path)
    assert str(e.value).startswith("/runs/r/epoch0002-ab: cannot resume from this checkpoint: ")
    assert "UnpicklingError" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointUnusable, match="No such file"), resuming_from("ckpt"):
        load_train_state(tmp_path / "missing")
    # Other I/O errors may be transient (a shared filesystem): they are retried as before.
    with pytest.raises(PermissionError), resuming_from("ckpt"):
        raise PermissionError("stale NFS handle")
    # It crosses process boundaries (worker → controller → driver) intact.
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is CheckpointUnusable and str(again) == str(e.value)


def test_a_permanent_worker_error_ends_the_run_in_the_controller():
    from bratslab.train.failures import PermanentFailure, fail_fast_callback

    callback = fail_fast_callback()
    transient = {0: _user_error(RuntimeError("boom")), 1: RuntimeError("actor died")}
    callback.after_exception(None, transient)  # nothing permanent: Ray retries as configured
    unusable = CheckpointUnusable("/runs/r/epoch0001-x: cannot resume from this checkpoint: E")
    with pytest.raises(PermanentFailure, match=r"^worker rank 1: /runs/r/epoch0001-x: cannot"):
        callback.after_exception(None, {0: RuntimeError("actor died"), 1: _user_error(unusable)})


def test_each_ray_train_failure_is_described_in_one_line():
    import ray.train
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError

    from bratslab.train.failures import PermanentFailure, describe, is_training_failure

    permanent = ray.train.ControllerError(PermanentFailure("worker rank 0: /c: cannot resume"))
    assert describe(permanent, 2) == (
        "worker rank 0: /c: cannot resume (not retried: every restart would fail the same way)"
    )
    startup = ray.train.ControllerError(
        WorkerGroupStartupFailedError("At least one of the worker actors failed.\nmore")
    )
    assert describe(startup, 2) == (
        "the worker group failed to start (scaling.max_failures=2): "
        "At least one of the worker actors failed."
    )
    # The rank whose own code raised is named, not the rank that died of it.
    group = ray.train.WorkerGroupError(
        "2 workers failed",
        {0: RuntimeError("Connection reset by peer"), 1: _user_error(ValueError("bad\nrest"))},
    )
    assert describe(group, 0) == "worker rank 1 failed (scaling.max_failures=0): ValueError: bad"
    for error in (permanent, startup, group):
        assert is_training_failure(error) and "\n" not in describe(error)
    assert not is_training_failure(ValueError("a bug in the driver"))


def test_what_the_train_controller_unpickles_imports_no_torch():
    """The controller process runs bratslab's callbacks (fail-fast, MLflow, progress); torch
    would add seconds of CPU to every run start for nothing the controller does."""
    import subprocess
    import sys

    code = (
        "import sys, bratslab.train.failures, bratslab.train.mlflow_callback, "
        "bratslab.train.progress; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
