"""Job plans: entrypoints, runtime environments and addresses, built without a cluster."""

from __future__ import annotations

import logging
import shlex
import socket
import zipfile
from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.jobs import entrypoint as ep
from bratslab.jobs import submit as sj

REPO = Path(__file__).resolve().parents[3]
LOCAL = "http://127.0.0.1:8265"
REMOTE = "https://ray.example.org"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in (*sj.FORWARDED_ENV, "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize(
    "given, env, expected",
    [
        (None, {}, LOCAL),
        ("10.0.0.5:8265", {}, "http://10.0.0.5:8265"),
        ("https://ray.example.org/", {}, "https://ray.example.org"),
        (None, {"RAY_ADDRESS": "http://head:8265"}, "http://head:8265"),
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, LOCAL),  # a GCS address is not the Jobs API
        (None, {"RAY_API_SERVER_ADDRESS": "http://a:1", "RAY_ADDRESS": "http://b:2"}, "http://a:1"),
    ],
)
def test_resolve_address(monkeypatch, given, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sj.resolve_address(given) == expected


def test_resolve_address_rejects_ray_client_urls():
    with pytest.raises(sj.JobsError, match="dashboard's http"):
        sj.resolve_address("ray://head:10001")


def test_loopback_detection():
    assert sj.is_loopback(LOCAL) and sj.is_loopback("http://localhost:1")
    assert not sj.is_loopback(REMOTE) and not sj.is_loopback("http://10.1.2.3:8265")


def test_smoke_spec_plans_bratslab_train_with_overrides():
    spec = REPO / "jobs" / "smoke.yaml"
    plan = sj.plan_spec_job(spec, ["training.epochs=1"], address=LOCAL, same_machine=True)
    assert plan.kind == "train"
    assert shlex.split(plan.entrypoint) == [
        "bratslab", "train", "jobs/smoke.yaml", "--set", "training.epochs=1",
    ]  # fmt: skip
    assert ep.resolve_command(plan.argv) == ("train",)
    renv = plan.runtime_env
    assert renv["working_dir"] == str(REPO)
    assert "/.venv" in renv["excludes"] and "/bratslab-work" in renv["excludes"]
    env = renv["env_vars"]
    # Local cluster: absolute work dir and tracking store, so runs land where `runs list` looks.
    assert env["BRATSLAB_HOME"].endswith("home") and Path(env["BRATSLAB_HOME"]).is_absolute()
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PATH"].endswith(":${PATH}")
    assert plan.submission_id.startswith("bratslab-train-smoke-")
    assert plan.metadata == {"bratslab_kind": "train", "spec": "jobs/smoke.yaml"}


def test_spec_with_sweep_section_plans_bratslab_sweep():
    plan = sj.plan_spec_job(REPO / "jobs" / "sweep_smoke.yaml", address=LOCAL)
    assert plan.kind == "sweep"
    assert shlex.split(plan.entrypoint)[:3] == ["bratslab", "sweep", "jobs/sweep_smoke.yaml"]


def test_invalid_override_fails_before_submission_naming_the_key():
    with pytest.raises(ConfigError, match="training.epochz"):
        sj.plan_spec_job(REPO / "jobs" / "smoke.yaml", ["training.epochz=3"], address=LOCAL)


def test_spec_outside_the_uploaded_folder_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "jobs" / "smoke.yaml").read_text())
    with pytest.raises(ConfigError, match="must lie inside the folder uploaded"):
        sj.plan_spec_job(outside, address=LOCAL, working_dir=REPO)
    # ...unless that folder is the one uploaded.
    plan = sj.plan_spec_job(outside, address=LOCAL, working_dir=tmp_path)
    assert plan.argv[:2] == ["train", "mine.yaml"]


def test_missing_spec_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such job spec"):
        sj.plan_spec_job(tmp_path / "nope.yaml", address=LOCAL)


def test_command_job_quotes_arguments_and_checks_the_command():
    argv = ["data", "preprocess", "/data/raw dir", "/data/store", "--workers", "2"]
    plan = sj.plan_command_job(argv, address=LOCAL, env={"EXTRA": "1"})
    assert plan.kind == "data-preprocess"
    assert shlex.split(plan.entrypoint) == ["bratslab", *argv]
    assert plan.runtime_env["env_vars"]["EXTRA"] == "1"
    with pytest.raises(ConfigError, match="'preprocez' is not a command of `bratslab data`"):
        sj.plan_command_job(["data", "preprocez"], address=LOCAL)
    with pytest.raises(ConfigError, match="runs on your machine"):
        sj.plan_command_job(["jobs", "list"], address=LOCAL)
    with pytest.raises(ConfigError, match="does not name a command"):
        sj.plan_command_job(["data"], address=LOCAL)


def test_a_loopback_port_that_is_not_a_ray_dashboard_is_remote():
    """`kubectl port-forward` / SSH tunnels listen on 127.0.0.1 but lead elsewhere: only a Ray
    dashboard process behind the port means "this machine"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert sj.is_loopback(address)
        assert not sj.runs_on_this_machine(address)  # the listener is this pytest process
        env = sj.job_env(address)
    # Remote treatment: no local tracking store or PATH is imposed on the cluster.
    assert "MLFLOW_TRACKING_URI" not in env and "PATH" not in env
    assert not sj.runs_on_this_machine(REMOTE)


def test_remote_cluster_gets_only_explicit_settings(monkeypatch, caplog):
    monkeypatch.delenv("BRATSLAB_HOME")
    with caplog.at_level(logging.WARNING):
        env = sj.job_env(REMOTE)
    assert "BRATSLAB_HOME" not in env and "MLFLOW_TRACKING_URI" not in env and "PATH" not in env
    assert "MLFLOW_TRACKING_URI is not set here" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sj.job_env(REMOTE, {}, same_machine=False)  # explicit: same answer
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
        sj.job_env(REMOTE)
    assert "runs will stay in a file on the cluster" in caplog.text
    caplog.clear()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("BRATSLAB_HOME", "/mnt/shared/work")
    with caplog.at_level(logging.WARNING):
        env = sj.job_env(REMOTE)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["BRATSLAB_HOME"] == "/mnt/shared/work"
    assert not caplog.text


def test_parse_env():
    assert sj.parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ConfigError, match="--env 'oops'"):
        sj.parse_env(["oops"])


def test_excludes_keep_the_package_and_drop_heavy_folders(tmp_path):
    """Ray's own packaging with our excludes: source and specs go, venvs/data/work do not."""
    from ray._private.runtime_env.packaging import create_package

    root = tmp_path / "proj"
    files = {
        "pyproject.toml": True,
        "jobs/smoke.yaml": True,
        "search_spaces/smoke.yaml": True,
        "platform/bratslab/data/store.py": True,  # a package named data: must stay
        "platform/bratslab/cli.py": True,
        ".venv/lib/site.py": False,
        "bratslab-work/store/c_x.npy": False,
        "data/raw/BraTS-GLI-00000-000-t1n.nii.gz": False,
        ".git/HEAD": False,
        "platform/bratslab/__pycache__/cli.cpython-311.pyc": False,
        "mlruns/0/meta.yaml": False,
    }
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    out = tmp_path / "pkg.zip"
    create_package(str(root), out, include_gitignore=True, excludes=list(sj.EXCLUDES))
    names = {n.rstrip("/") for n in zipfile.ZipFile(out).namelist()}
    for rel, kept in files.items():
        assert (rel in names) == kept, rel
