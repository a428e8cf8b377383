"""CLI wiring of the ops commands: registered names, fast imports, `bratslab ui` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bratslab.app.main import command_tree
from bratslab.jobs.entrypoint import command_names
from bratslab.settings import get_settings
from bratslab.tracking.ui import is_loopback_host, server_command


def test_ops_commands_are_registered():
    names = command_names(command_tree())
    for cmd in [
        ("submit",),
        ("jobs", "list"), ("jobs", "status"), ("jobs", "logs"), ("jobs", "stop"),
        ("models", "list"), ("models", "show"), ("models", "promote"), ("models", "download"),
        ("models", "register"),
        ("runs", "list"), ("runs", "compare"),
        ("spec", "schema"), ("spec", "explain"),
        ("ui",),
    ]:  # fmt: skip
        assert cmd in names, cmd


def test_ops_cli_modules_do_not_import_mlflow_or_ray():
    """`bratslab --help` must stay fast: heavy imports happen inside the commands."""
    code = (
        "import sys, bratslab.app.main; "
        "print(sorted(m for m in ('mlflow', 'ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ui_serves_the_settings_store_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BRATSLAB_ARTIFACTS", raising=False)
    s = get_settings()
    cmd = server_command(s, port=5055)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5055"
    assert "--no-serve-artifacts" in cmd
    assert Path(tmp_path / "mlartifacts").is_dir()


def test_loopback_hosts():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and is_loopback_host("127.0.0.5")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("10.0.0.1")
    assert not is_loopback_host("example.org")


def test_jobs_list_json_rows_from_real_job_details():
    """What `bratslab jobs list --json` prints (the command needs a cluster; the rows do not)."""
    import json
    from datetime import datetime

    from ray.job_submission import JobDetails, JobStatus, JobType

    from bratslab.app.cli.jobs import job_rows

    t0 = 1_700_000_000_000
    details = [
        JobDetails(
            type=JobType.SUBMISSION, submission_id="raysubmit_old", entrypoint="bratslab train a",
            status=JobStatus.FAILED, start_time=t0, end_time=t0 + 90_500, message="boom",
            metadata={"bratslab_kind": "train"},
        ),
        JobDetails(
            type=JobType.SUBMISSION, submission_id="raysubmit_new", job_id="03000000",
            entrypoint="bratslab sweep b", status=JobStatus.RUNNING, start_time=t0 + 100_000,
        ),
        JobDetails(type=JobType.SUBMISSION, entrypoint="x", status=JobStatus.PENDING),
    ]  # fmt: skip
    rows = json.loads(json.dumps(job_rows(details)))  # plain JSON types only
    assert [r["submission_id"] for r in rows] == ["raysubmit_new", "raysubmit_old", None]
    new, old, pending = rows
    assert old["status"] == "FAILED" and old["kind"] == "train" and old["message"] == "boom"
    assert old["duration_s"] == 90.5
    assert datetime.fromisoformat(old["start_time"]).timestamp() == t0 / 1000
    assert datetime.fromisoformat(old["end_time"]).timestamp() == (t0 + 90_500) / 1000
    assert new["status"] == "RUNNING" and new["end_time"] is None and new["duration_s"] > 0
    assert new["kind"] is None and new["job_id"] == "03000000" and new["metadata"] == {}
    assert pending["start_time"] is None and pending["duration_s"] is None


def test_version_flag_prints_the_installed_version():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from bratslab.app.main import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"bratslab {version('bratslab')}"
