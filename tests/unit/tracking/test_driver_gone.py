"""`runs list` tells a RUNNING run whose driver died (SIGKILL: it could not mark the run) from
one still driven: every run records its driver's pid, host and start time when it starts.

Real processes: one driver is killed with SIGKILL; the store is SQLite in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

_DRIVER = """
import os, signal, sys
from bratslab.tracking import mlflow_runs
run_id = mlflow_runs.start_run(experiment="drivers", run_name=sys.argv[1])
print(run_id, flush=True)
if sys.argv[1] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_a_running_run_whose_driver_was_killed_says_so(home):
    from bratslab.app.main import app
    from bratslab.tracking import mlflow_runs
    from bratslab.tracking.driver import TAG_DRIVER

    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, "killed"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr
    killed = proc.stdout.split()[0]
    alive = mlflow_runs.start_run(experiment="drivers", run_name="alive")  # this process
    tag = json.loads(mlflow_runs.client().get_run(killed).data.tags[TAG_DRIVER])
    assert tag["pid"] > 0 and tag["host"] and tag["start"] is not None

    r = CliRunner().invoke(app, ["runs", "list", "-e", "drivers", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["run_id"]: row for row in json.loads(r.stdout)}
    assert rows[killed]["status"] == "RUNNING" and rows[killed]["driver_gone"] is True
    assert rows[alive]["status"] == "RUNNING" and rows[alive]["driver_gone"] is False
    r = CliRunner().invoke(app, ["runs", "list", "-e", "drivers"], env={"COLUMNS": "250"})
    killed_id, alive_id = killed[:8], alive[:8]  # the table shows 8 characters of an id
    lines = {ln for ln in r.stdout.splitlines() if killed_id in ln or alive_id in ln}
    assert any(killed_id in ln and "RUNNING (driver gone)" in ln for ln in lines), r.stdout
    assert any(alive_id in ln and "RUNNING " in ln and "driver gone" not in ln for ln in lines)
    # Finished runs are never "gone": only RUNNING is in doubt.
    mlflow_runs.end_run(killed, "KILLED")
    r = CliRunner().invoke(app, ["runs", "list", "-e", "drivers", "--json"])
    assert {row["run_id"]: row for row in json.loads(r.stdout)}[killed]["driver_gone"] is False
