"""``bratslab train`` refuses a job whose store is missing: exit 2, one line, nothing created."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bratslab.config import ConfigError

JOB = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"


def test_missing_store_exits_2_naming_the_paths_and_creates_no_run_folder(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "BRATSLAB_HOME": str(home), "MLFLOW_TRACKING_URI": ""}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", "from bratslab.app.main import main; main()", "train", str(JOB)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # smoke.yaml's store is relative: looked up in the current folder and under the home.
    assert str(tmp_path / "store") in lines[0]
    assert str(home / "store") in lines[0]
    assert str(JOB) in lines[0] and "no such store" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no home, no ray_results/smoke


def test_run_training_checks_the_store_before_creating_anything(tmp_path, monkeypatch):
    from bratslab.jobs.spec import load_job
    from bratslab.train.trainer import run_training

    store = tmp_path / "empty-store"
    store.mkdir()  # a folder, but no dataset.json in it
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    spec = load_job(JOB, [f"data.store={store}"])
    with pytest.raises(ConfigError, match=re.escape(f"{store} is not a preprocessed store")):
        run_training(spec, storage_path=tmp_path / "results")
    assert not (tmp_path / "results").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("name", ["../../x", "/abs"])
def test_a_name_that_is_not_one_folder_exits_2_and_creates_nothing(tmp_path, name):
    home = tmp_path / "work" / "home"
    env = {**os.environ, "BRATSLAB_HOME": str(home), "MLFLOW_TRACKING_URI": ""}
    env.pop("RAY_ADDRESS", None)
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", "from bratslab.app.main import main; main()", "train", str(JOB)]
        + ["--name", name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"--name {name!r}: not a valid name; use letters, digits, '_', '.' and '-', starting "
        "with a letter or digit, at most 255 characters (it names a folder)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert list(cwd.iterdir()) == []


def test_run_training_refuses_an_unsafe_name_before_creating_anything(tmp_path, monkeypatch):
    from bratslab.jobs.spec import load_job
    from bratslab.train.trainer import run_training

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    spec = load_job(JOB, [f"data.store={tmp_path / 'store'}"])
    with pytest.raises(ConfigError, match=re.escape("run name '../escape': not a valid name")):
        run_training(spec, name="../escape", storage_path=tmp_path / "results")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_training_run_ends_with_one_line_and_exit_1(capsys, caplog):
    import logging

    import ray.train
    import typer

    from bratslab.app.cli.train import _training_failed
    from bratslab.train.failures import PermanentFailure

    error = ray.train.ControllerError(PermanentFailure("worker rank 0: /c/e1: cannot resume"))
    with caplog.at_level(logging.INFO), pytest.raises(typer.Exit) as e:
        _training_failed(error, "smoke", 2)
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "train smoke: worker rank 0: /c/e1: cannot resume (not retried: every restart would "
        "fail the same way)"
    ]
    assert "Traceback" not in err and not caplog.records  # the traceback only with --verbose
    with caplog.at_level(logging.DEBUG), pytest.raises(typer.Exit):
        _training_failed(error, "smoke", 2)
    assert caplog.records[-1].exc_info[1] is error
    with pytest.raises(ValueError):  # not a training failure: not swallowed
        _training_failed(ValueError("a bug"), "smoke", 2)
