"""Job plans: entrypoints, runtime environments and addresses, built without a cluster."""

from __future__ import annotations

import logging
import shlex
import socket
import zipfile
from pathlib import Path

import pytest

from bratslab.app.main import command_tree
from bratslab.config import ConfigError
from bratslab.jobs import client as jc
from bratslab.jobs import entrypoint as ep
from bratslab.jobs import submit as sj

REPO = Path(__file__).resolve().parents[3]
LOCAL = "http://127.0.0.1:8265"
REMOTE = "https://ray.example.org"
COMMANDS = command_tree()


def plan_command(argv, **kwargs) -> sj.JobPlan:
    """``sj.plan_command_job`` checked against the real ``bratslab`` command tree."""
    return sj.plan_command_job(argv, commands=COMMANDS, **kwargs)


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
    assert jc.resolve_address(given) == expected


def test_resolve_address_rejects_ray_client_urls():
    with pytest.raises(jc.JobsError, match="dashboard's http"):
        jc.resolve_address("ray://head:10001")


def test_loopback_detection():
    assert jc.is_loopback(LOCAL) and jc.is_loopback("http://localhost:1")
    assert not jc.is_loopback(REMOTE) and not jc.is_loopback("http://10.1.2.3:8265")


def test_smoke_spec_plans_bratslab_train_with_overrides():
    spec = REPO / "jobs" / "smoke.yaml"
    plan = sj.plan_spec_job(spec, ["training.epochs=1"], address=LOCAL, same_machine=True)
    assert plan.kind == "train"
    words = shlex.split(plan.entrypoint)
    assert words[:5] == ["bratslab", "train", "jobs/smoke.yaml", "--set", "training.epochs=1"]
    # The relative data.store is pinned to what this machine means by it (see below).
    assert words[5] == "--set" and words[6].startswith("data.store=/") and len(words) == 7
    assert ep.resolve_command(COMMANDS, plan.argv) == ("train",)
    renv = plan.runtime_env
    assert renv["working_dir"] == str(REPO)
    assert ".venv" in renv["excludes"] and "/bratslab-work" in renv["excludes"]
    # Every worker of the job pins its cluster's GCS (another Ray on a node is never joined).
    assert renv["worker_process_setup_hook"] == "bratslab.cluster.pin_worker_address"
    env = renv["env_vars"]
    # Local cluster: absolute work dir and tracking store, so runs land where `runs list` looks.
    assert env["BRATSLAB_HOME"].endswith("home") and Path(env["BRATSLAB_HOME"]).is_absolute()
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PATH"].endswith(":${PATH}")
    assert plan.submission_id.startswith("bratslab-train-smoke-")
    assert plan.metadata == {"bratslab_kind": "train", "spec": "jobs/smoke.yaml"}


# The shipped specs name data.store `store`: against a cluster elsewhere that is refused when the
# current folder holds a ./store (the README's journey makes one in the clone), so tests that
# plan them for such a cluster name a store every node can read.
SHARED_STORE = ["data.store=s3://bucket/store"]


def test_spec_with_sweep_section_plans_bratslab_sweep():
    plan = sj.plan_spec_job(REPO / "jobs" / "sweep_smoke.yaml", SHARED_STORE, address=LOCAL)
    assert plan.kind == "sweep"
    assert shlex.split(plan.entrypoint)[:3] == ["bratslab", "sweep", "jobs/sweep_smoke.yaml"]


def test_invalid_override_fails_before_submission_naming_the_key():
    with pytest.raises(ConfigError, match="training.epochz"):
        sj.plan_spec_job(REPO / "jobs" / "smoke.yaml", ["training.epochz=3"], address=LOCAL)


def test_spec_outside_the_uploaded_folder_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "jobs" / "smoke.yaml").read_text())
    with pytest.raises(ConfigError, match="must lie inside the folder uploaded"):
        sj.plan_spec_job(outside, SHARED_STORE, address=LOCAL, working_dir=REPO)
    # ...unless that folder is the one uploaded.
    plan = sj.plan_spec_job(outside, SHARED_STORE, address=LOCAL, working_dir=tmp_path)
    assert plan.argv[:2] == ["train", "mine.yaml"]


def test_missing_spec_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such job spec"):
        sj.plan_spec_job(tmp_path / "nope.yaml", address=LOCAL)


def test_command_job_quotes_arguments_and_checks_the_command():
    argv = ["data", "preprocess", "/data/raw dir", "/data/store", "--workers", "2"]
    plan = plan_command(argv, address=LOCAL, env={"EXTRA": "1"})
    assert plan.kind == "data-preprocess"
    assert shlex.split(plan.entrypoint) == ["bratslab", *argv]
    assert plan.runtime_env["env_vars"]["EXTRA"] == "1"
    with pytest.raises(ConfigError, match="'preprocez' is not a command of `bratslab data`"):
        plan_command(["data", "preprocez"], address=LOCAL)
    with pytest.raises(ConfigError, match="runs on your machine"):
        plan_command(["jobs", "list"], address=LOCAL)
    with pytest.raises(ConfigError, match="does not name a command"):
        plan_command(["data"], address=LOCAL)


def test_a_loopback_port_that_is_not_a_ray_dashboard_is_remote():
    """`kubectl port-forward` / SSH tunnels listen on 127.0.0.1 but lead elsewhere: only a Ray
    dashboard process behind the port means "this machine"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert jc.is_loopback(address)
        assert not jc.runs_on_this_machine(address)  # the listener is this pytest process
        env = sj.job_env(address)
    # Remote treatment: no local tracking store or PATH is imposed on the cluster.
    assert "MLFLOW_TRACKING_URI" not in env and "PATH" not in env
    assert not jc.runs_on_this_machine(REMOTE)


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
        "platform/bratslab/app/main.py": True,
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


# --------------------------------------------------------------------------- paths (#30)


def _project(root: Path, store: bool = True) -> Path:
    """A clone-like folder after the README journey: specs, and a ./store with data in it."""
    (root / "jobs").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "jobs" / "smoke.yaml").write_text((REPO / "jobs" / "smoke.yaml").read_text())
    if store:
        (root / "store").mkdir()
        (root / "store" / "dataset.json").write_text("{}")
        (root / "store" / "BraTS-GLI-00000-000_x.npy").write_bytes(b"\0" * 4096)
    for rel in ("raw/c/c-t1n.nii.gz", "pred/c.nii.gz", "metrics.csv", "submission.csv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0" * 4096)
    return root


def _sets(plan) -> dict[str, str]:
    argv = plan.argv
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return dict(p.split("=", 1) for p in pairs)


def test_a_relative_store_means_the_client_folder_on_a_local_cluster(tmp_path, monkeypatch):
    """The README journey leaves ./store in the clone: the job must read that very folder
    (absolute), not `store/` inside its uploaded copy of the project, which never holds data."""
    root = _project(tmp_path / "clone")
    monkeypatch.chdir(root)
    plan = sj.plan_spec_job(Path("jobs/smoke.yaml"), address=LOCAL, same_machine=True)
    assert _sets(plan)["data.store"] == str(root / "store")
    from bratslab.compat.ray_packaging import package_files

    packed = {p.as_posix() for p in package_files(root, sj.EXCLUDES)}
    assert packed == {"pyproject.toml", "jobs/smoke.yaml"}
    assert plan.package_bytes == sum((root / p).stat().st_size for p in packed)
    assert plan.package_warning() is None


def test_a_store_not_in_the_folder_is_the_work_dirs_on_a_local_cluster(tmp_path, monkeypatch):
    root = _project(tmp_path / "clone", store=False)
    monkeypatch.chdir(root)
    plan = sj.plan_spec_job(Path("jobs/smoke.yaml"), address=LOCAL, same_machine=True)
    assert _sets(plan)["data.store"] == str(tmp_path / "home" / "store")


def test_a_client_local_store_is_refused_for_a_remote_cluster(tmp_path, monkeypatch):
    root = _project(tmp_path / "clone")
    monkeypatch.chdir(root)
    spec = Path("jobs/smoke.yaml")
    with pytest.raises(ConfigError, match="data.store 'store' is a folder on this machine.*s3://"):
        sj.plan_spec_job(spec, address=REMOTE, same_machine=False)
    # Shared names pass verbatim: an object-store URI, a path the cluster mounts.
    for store in ("s3://bucket/brats", "/mnt/shared/store"):
        plan = sj.plan_spec_job(spec, [f"data.store={store}"], address=REMOTE, same_machine=False)
        assert [k for k in _sets(plan) if k != "data.store"] == []
        assert _sets(plan)["data.store"] == store  # the user's own --set, unchanged
        assert plan.argv.count("--set") == 1
    # A relative name that is not here means the cluster's own $BRATSLAB_HOME/NAME.
    (root / "store" / "dataset.json").unlink()
    (root / "store" / "BraTS-GLI-00000-000_x.npy").unlink()
    (root / "store").rmdir()
    plan = sj.plan_spec_job(spec, address=REMOTE, same_machine=False)
    assert "data.store" not in _sets(plan)


def test_init_from_folders_are_pinned_and_model_uris_pass(tmp_path, monkeypatch):
    root = _project(tmp_path / "clone")
    monkeypatch.chdir(root)
    spec = Path("jobs/smoke.yaml")
    plan = sj.plan_spec_job(spec, ["model.init_from=ckpt/best"], address=LOCAL, same_machine=True)
    assert _sets(plan)["model.init_from"] == str(root / "ckpt" / "best")
    uri = "models:/bratslab-gli@champion"
    plan = sj.plan_spec_job(spec, [f"model.init_from={uri}"], address=LOCAL, same_machine=True)
    assert _sets(plan)["model.init_from"] == uri and plan.argv.count(f"model.init_from={uri}") == 1
    with pytest.raises(ConfigError, match="model.init_from 'ckpt/best' is a folder on this"):
        sj.plan_spec_job(
            spec,
            ["model.init_from=ckpt/best", "data.store=s3://b/s"],
            address=REMOTE,
            same_machine=False,
        )


def test_command_job_paths_are_absolute_locally_and_refused_remotely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["data", "preprocess", "raw/", "--workers", "2", "store"]
    plan = plan_command(argv, address=LOCAL, same_machine=True)
    assert plan.argv == [
        "data", "preprocess", str(tmp_path / "raw"), "--workers", "2", str(tmp_path / "store"),
    ]  # fmt: skip
    plan = plan_command(
        ["predict", "--model", "models:/m@champion", "--input=in", "--output", "out"],
        address=LOCAL,
        same_machine=True,
    )
    assert plan.argv[-3:] == [f"--input={tmp_path / 'in'}", "--output", str(tmp_path / "out")]
    assert "models:/m@champion" in plan.argv
    with pytest.raises(ConfigError, match="RAW 'raw' is a folder on this machine"):
        plan_command(argv, address=REMOTE, same_machine=False)
    remote = ["data", "preprocess", "/mnt/raw", "s3://bucket/store"]
    assert plan_command(remote, address=REMOTE, same_machine=False).argv == remote


def test_a_heavy_package_is_a_warning_naming_its_biggest_folders(tmp_path, monkeypatch):
    root = _project(tmp_path / "clone")
    (root / "notes").mkdir()
    (root / "notes" / "scan.bin").write_bytes(b"\0" * (sj.PACKAGE_WARN_BYTES + 1))
    monkeypatch.chdir(root)
    plan = sj.plan_spec_job(Path("jobs/smoke.yaml"), address=LOCAL, same_machine=True)
    assert plan.package_bytes > sj.PACKAGE_WARN_BYTES
    assert "mostly notes (5.0 MB)" in plan.package_warning()


def test_a_starting_head_is_waited_for_and_other_errors_are_not(monkeypatch):
    answers = [
        RuntimeError("Request failed with status code 500: No available agent to submit job"),
        ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1."),
        "job-1",
    ]
    told: list[str] = []

    def action():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert jc._patiently(action, LOCAL, 30, told.append) == "job-1"
    assert len(told) == 1 and "waiting for the Ray head" in told[0]
    # Not a starting head: raised at once, nothing waited.
    answers[:] = [RuntimeError("Request failed with status code 404: no such job")]
    with pytest.raises(RuntimeError, match="404"):
        jc._patiently(action, LOCAL, 30, told.append)
    assert len(told) == 1
    # A head that never comes up: the last error, once the wait is spent.
    answers[:] = [ConnectionError("Failed to connect to Ray at address: x")] * 10
    with pytest.raises(ConnectionError):
        jc._patiently(action, LOCAL, 0.2, told.append)
    monkeypatch.setenv(jc.HEAD_WAIT_ENV, "5")
    assert jc.head_wait_s() == 5.0
    monkeypatch.setenv(jc.HEAD_WAIT_ENV, "soon")
    with pytest.raises(ConfigError, match="BRATSLAB_HEAD_WAIT_S='soon'"):
        jc.head_wait_s()


def test_a_remote_command_may_name_files_its_package_carries(tmp_path, monkeypatch):
    root = _project(tmp_path / "clone")
    (root / "configs").mkdir()
    (root / "configs" / "pp.json").write_text("{}")
    monkeypatch.chdir(root / "configs")
    argv = ["postprocess", "apply", "--config", "pp.json", "/mnt/in", "s3x"]
    with pytest.raises(ConfigError, match="OUT_DIR 's3x' is a folder on this machine"):
        plan_command(argv, address=REMOTE, working_dir=root, same_machine=False)
    argv[-1] = "/mnt/out"
    plan = plan_command(argv, address=REMOTE, working_dir=root, same_machine=False)
    assert plan.argv == [
        "postprocess",
        "apply",
        "--config",
        "configs/pp.json",
        "/mnt/in",
        "/mnt/out",
    ]
