"""``bratslab train`` stopped by SIGTERM (``bratslab jobs stop``, Kubernetes/Slurm preemption):
a real CLI subprocess is signalled after its first checkpoint, exits promptly with 143 and
leaves its MLflow run KILLED with the reason; rerunning the same command resumes after the
checkpoint and finishes the same number of epochs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
EPOCHS = 4
STOP_WITHIN_S = 60  # SIGTERM → process gone (MLflow update + local Ray teardown)


def _command(store: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from bratslab.app.main import main; main()",
        "train",
        str(JOB),
        "--set",
        f"data.store={store}",
        "--set",
        f"training.epochs={EPOCHS}",
        "--set",
        "training.steps_per_epoch=3",
        "--set",
        "tracking.log_model=false",
    ]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "BRATSLAB_HOME": str(home)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):  # the session fixtures may have set them
        env.pop(key, None)
    return env


def _wait_for_lines(log_file: Path, n: int, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until ``log_file`` has ``n`` lines. The Train controller appends an epoch's line after
    its checkpoint manager has registered (and persisted) that epoch's checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_file.is_file() and len(log_file.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"train exited {proc.returncode} before epoch {n}:\n{out}\n{err}")
        time.sleep(0.2)
    pytest.fail(f"no epoch {n} line in {log_file} within {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    """Teardown for a failed test: end the subprocess's session (Ray's processes included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_sigterm_marks_the_run_killed_and_a_rerun_resumes_it(tiny_store, tmp_path):
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.train.checkpoint import load_train_state
    from bratslab.train.run_storage import RUN_STATE

    home = tmp_path / "home"
    run_dir = home / "ray_results" / "smoke"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    proc = subprocess.Popen(
        _command(tiny_store),
        cwd=tmp_path,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a failed test can clean it up
    )
    try:
        _wait_for_lines(run_dir / "train_log.txt", 1, proc, timeout_s=300)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STOP_WITHIN_S)
        stopped_in = time.monotonic() - t0
    finally:
        _stop(proc)
    assert proc.returncode == 143, f"exit {proc.returncode} after {stopped_in:.1f} s:\n{out}{err}"
    assert "stopped by SIGTERM" in err

    run_id = json.loads((run_dir / RUN_STATE).read_text())["mlflow_run_id"]
    info = run_info(run_id, uri)
    assert info["status"] == "KILLED"
    assert info["tags"]["bratslab.stop_reason"] == "SIGTERM"
    stopped_epochs = [s for s, _ in metric_history(run_id, "train/loss", uri)]
    assert stopped_epochs and stopped_epochs[0] == 0 and len(stopped_epochs) < EPOCHS

    rerun = subprocess.run(
        _command(tiny_store),
        cwd=tmp_path,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert json.loads((run_dir / RUN_STATE).read_text())["mlflow_run_id"] == run_id
    info = run_info(run_id, uri)
    assert info["status"] == "FINISHED"
    # Every epoch logged exactly once; the rerun started after the last checkpoint, not at 0.
    assert [s for s, _ in metric_history(run_id, "train/loss", uri)] == list(range(EPOCHS))
    resumed = dict(metric_history(run_id, "resumed_from_epoch", uri))
    assert resumed[0] == 0.0
    first_rerun_epoch = len(stopped_epochs)
    assert resumed[EPOCHS - 1] == first_rerun_epoch >= 1
    latest = sorted(run_dir.glob("epoch*"), key=lambda p: load_train_state(p)["epoch"])[-1]
    state = load_train_state(latest)
    assert state["epoch"] == EPOCHS and state["global_step"] == EPOCHS * 3
