"""How a training run fails: bounded restarts, permanent errors at once, one line naming why.

- ``scaling.max_failures`` bounds both kinds of worker-group restart that Ray Train 2.60 counts:
  failures while training (``FailureConfig.max_failures``) and failures while the worker group
  starts (``controller_failure_limit``, unbounded by Ray's default: workers killed as they start
  were retried forever). -1 leaves both unbounded.
- Waiting for CPUs/GPUs is not a failure, but Ray Train counts a worker group that waits longer
  than ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s by Ray's default) as a start-up failure.
  bratslab raises that default to :data:`START_TIMEOUT_S` (set the variable to change it), so a
  run queued behind other trials or waiting for an autoscaler keeps its restarts for failures.
- A checkpoint that cannot be loaded (refused by weights-only unpickling, truncated, a missing
  file) fails the same way on every restart: the worker raises
  :class:`CheckpointUnusable` and the controller callback from
  :func:`fail_fast_callback` ends the run at once (:class:`PermanentFailure`).
- :func:`describe` turns Ray Train's error into the one line ``bratslab train`` prints; the MLflow
  run gets it as the tag ``bratslab.failure``.
"""

from __future__ import annotations

import os
from typing import Any

from bratslab.compat.ray_core import worker_exception
from bratslab.tracking import mlflow_runs

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
START_TIMEOUT_S = 900  # a worker group waits this long for its resources before it counts
FAILURE_TAG = "bratslab.failure"  # MLflow tag of a FAILED run: the one-line cause
STARTUP_ERRORS = ("WorkerGroupStartupFailedError", "WorkerGroupStartupTimeoutError")


class CheckpointUnusable(RuntimeError):
    """A checkpoint folder that cannot be loaded, and will not load on a retry either.

    Defined here, not beside the checkpoint code (``bratslab.train.checkpoint``), so that the
    Train controller, which unpickles :func:`fail_fast_callback`, never imports torch for it."""


class PermanentFailure(RuntimeError):
    """An error no restart can fix; raised in the Train controller, so Ray does not retry."""


def failure_config(max_failures: int):
    """``ray.train.FailureConfig`` bounding restarts in training and in start-up alike."""
    import ray.train  # Ray

    # Read by the Train controller, which Ray Train starts with the driver's value of it.
    os.environ.setdefault(START_TIMEOUT_ENV, str(START_TIMEOUT_S))
    return ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures)


def fail_fast_callback():
    """A ``ray.train.UserCallback`` ending the run at the first permanent worker error."""
    import ray.train  # Ray

    class FailFast(ray.train.UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
            for rank, error in sorted(worker_exceptions.items()):
                cause = _cause(error)
                if isinstance(cause, CheckpointUnusable):
                    # Raised in the controller's poll: a ControllerError that Ray never retries.
                    raise PermanentFailure(f"worker rank {rank}: {cause}")

    return FailFast()


def is_training_failure(error: BaseException) -> bool:
    """A Ray Train run that failed (as opposed to a bug or a signal in the driver)."""
    import ray.train  # Ray

    return isinstance(error, ray.train.TrainingFailedError)


def describe(error: BaseException, max_failures: int | None = None) -> str:
    """One line saying why a Ray Train run failed, for the console and the MLflow run."""
    import ray.train  # Ray

    budget = "" if max_failures is None else f" (scaling.max_failures={max_failures})"
    if isinstance(error, ray.train.ControllerError):
        cause = error.controller_failure
        if isinstance(cause, PermanentFailure):
            return f"{cause} (not retried: every restart would fail the same way)"
        if type(cause).__name__ in STARTUP_ERRORS:
            return f"the worker group failed to start{budget}: {_line(cause)}"
        return f"the Ray Train controller failed: {_named(cause)}"
    if isinstance(error, ray.train.WorkerGroupError):
        rank, failure = min(error.worker_failures.items(), key=_user_errors_first)
        return f"worker rank {rank} failed{budget}: {_named(_cause(failure))}"
    return _named(error)


def record(run_id: str, error: BaseException, max_failures: int) -> None:
    """Tag a failed training run's MLflow run with the one-line cause."""
    if is_training_failure(error):
        mlflow_runs.set_tags(run_id, {FAILURE_TAG: describe(error, max_failures)[:4000]})


def _cause(error: BaseException) -> BaseException:
    return worker_exception(error) or error


def _user_errors_first(item: tuple[int, Any]) -> tuple[int, int]:
    """Rank order, the ranks whose own code raised first: the others usually died of it."""
    rank, failure = item
    return (_cause(failure) is failure, rank)


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _named(error: BaseException) -> str:
    """``Type: first line``, or the first line alone for Ray's own errors, which say it."""
    line = _line(error)
    if type(error).__module__.startswith("ray.") or line.startswith(type(error).__name__):
        return line
    return f"{type(error).__name__}: {line}"
