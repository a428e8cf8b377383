"""Jobs against a real local Ray cluster: `ray start --head` with token auth, bound to loopback.

One cluster for the whole module (start-up costs ~15 s). It runs under a private ``HOME`` so the
token Ray generates (``$HOME/.ray/auth_token``) is this test's own, and it is torn down by
terminating exactly the processes it started (never `ray stop`, which would kill every Ray
instance on the machine, including other test sessions').

The client side is the real ``bratslab`` console script in a subprocess with that ``HOME``: the
token is found the way a user's would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

# Ray bundles psutil (ray/thirdparty_files) and puts it on sys.path when imported; no extra
# dependency just for process bookkeeping in this test.
ray = pytest.importorskip("ray")
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMOKE_SPEC = REPO / "jobs" / "smoke.yaml"


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Head:
    address: str
    home: Path
    work: Path
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path
    temp_dir: Path
    #: The `bratslab submit --wait -- data synth RAW` run the moment `ray start` was launched.
    first_submit: subprocess.CompletedProcess | None = None

    def diagnosis(self) -> str:
        """Why the head is gone: `ray start`'s output and the tails of the component logs."""
        parts = [f"ray start exited with {self.proc.poll()}:", self.log.read_text()[-3000:]]
        for name in ("gcs_server.out", "raylet.out", "dashboard.log", "raylet.err"):
            for f in self.temp_dir.glob(f"session_*/logs/{name}"):
                parts += [f"--- {f.name}:", "\n".join(f.read_text().splitlines()[-15:])]
        return "\n".join(parts)

    def cli(self, *args: str, env: dict | None = None, timeout: float = 600, cwd: Path = REPO):
        """Run ``bratslab ARGS`` as a user on this machine would."""
        return run_cli(args, env or self.env, timeout=timeout, cwd=cwd)


def run_cli(args, env: dict, *, timeout: float = 600, cwd: Path = REPO):
    return subprocess.run(
        [str(BIN / "bratslab"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _client_env(home: Path, work: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_", "BRATSLAB_")) and k != "HOME"
    }
    env.update(
        HOME=str(home),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
        OMP_NUM_THREADS="1",
        COLUMNS="250",  # rich tables: no wrapping of run ids in captured output
        BRATSLAB_HOME=str(work),
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        # The job's own Ray driver joins the 4-CPU cluster; keep its thread pools small.
        BRATSLAB_RAY_CPUS="4",
    )
    return env


def _terminate_tree(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop the `ray start --block` process and every process it (transitively) started."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    # Workers re-parented after their raylet died still carry our private temp dir.
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in arg for arg in p.info["cmdline"] or []) and p not in tree:
                tree.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    # A few of the head's processes outlive SIGTERM (the module's teardown waited the whole
    # 15 s it allowed them); nothing of the cluster is kept, so they are killed sooner.
    _, alive = psutil.wait_procs(tree, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def head():
    """A 4-CPU Ray head with dashboard, on 127.0.0.1 only, with Ray's default token auth."""
    # Short paths: Ray's Unix sockets live under --temp-dir (108-byte sun_path limit).
    base = Path(tempfile.mkdtemp(prefix="brl-", dir="/tmp"))
    home, work, temp_dir = base / "home", base / "work", base / "ray"
    for d in (home, work, temp_dir):
        d.mkdir()
    gcs, dash, agent_http, agent_grpc, metrics, client, rt_env, nm, om = _free_ports(9)
    env = _client_env(home, work)
    # Single-machine mode (as bratslab.cluster does for ray.init): Ray then resolves its node
    # address to loopback instead of the machine's external interface; --node-ip-address alone
    # still leaves the GCS and the Ray Client server on other interfaces.
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}",
        f"--runtime-env-agent-port={rt_env}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        "--num-cpus=4",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    # What a user does once per machine (or what an earlier `ray.init()` did for them): with a
    # token in ~/.ray/auth_token, `ray start --head` turns token authentication on.
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    log_path = base / "ray-start.log"
    address = f"http://127.0.0.1:{dash}"
    # The first job is submitted the moment `ray start` is launched, with no sleep: `submit`
    # itself must wait for the head (connection refused, then "No available agent").
    first = [
        "submit", "--address", address, "--wait", "--head-wait", "300", "--",
        "data", "synth", str(work / "raw"), "--cases", "4", "--shape", "48", "48", "40",
    ]  # fmt: skip
    proc = submitted = None
    try:
        # Ray gives the raylet a fixed 30 s to register with the GCS; on a saturated shared
        # machine that can pass, and `ray start` then gives up. Try again a few times.
        for attempt in range(3):
            proc = _start_head(cmd, head_env, log_path, base)
            submitted = run_cli(first, env, timeout=900)
            if proc.poll() is None:
                break
            _terminate_tree(proc, str(temp_dir))
            (base / f"ray-start.failed-{attempt}.log").write_text(log_path.read_text())
        else:
            raise RuntimeError(f"the Ray head did not start 3 times:\n{log_path.read_text()}")
        yield Head(address, home, work, env, proc, log_path, temp_dir, submitted)
    finally:
        if proc is not None:
            _terminate_tree(proc, str(temp_dir))
        shutil.rmtree(base, ignore_errors=True)


def _start_head(cmd: list[str], env: dict, log_path: Path, cwd: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)


@pytest.fixture(autouse=True)
def _head_still_up(request):
    """Fail with the cluster's own logs, not a connection error, if the head has died (on a
    busy shared machine its components can miss health checks, or a stray `ray stop` by
    another process can take them down)."""
    if "head" not in request.fixturenames:
        yield
        return
    head = request.getfixturevalue("head")
    if head.proc.poll() is not None:
        pytest.fail(head.diagnosis())
    yield
    if head.proc.poll() is not None:
        pytest.fail(head.diagnosis())


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append((c.pid, c.laddr.ip, c.laddr.port))
    return out


def test_cluster_has_token_auth_and_listens_on_loopback_only(head):
    token_file = head.home / ".ray" / "auth_token"
    assert token_file.is_file() and token_file.read_text().strip()
    # Without the token the Jobs API refuses us.
    assert requests.get(f"{head.address}/api/jobs/", timeout=5).status_code == 401
    root = psutil.Process(head.proc.pid)
    pids = {root.pid, *(p.pid for p in root.children(recursive=True))}
    sockets = _listening(pids)
    assert sockets, "found no listening sockets of the cluster"
    exposed = [
        (*s, " ".join(psutil.Process(s[0]).cmdline())[:150])
        for s in sockets
        if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    ]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def test_missing_token_is_a_clear_error(head, pipeline, tmp_path):
    empty_home = tmp_path / "fresh-home"
    empty_home.mkdir()
    env = {**head.env, "HOME": str(empty_home)}
    r = head.cli("jobs", "list", "--address", head.address, env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "requires token authentication" in r.stderr
    assert "no token was found" in r.stderr
    assert str(empty_home / ".ray" / "auth_token") in r.stderr
    # A wrong token is named as such.
    r = head.cli("jobs", "list", "--address", head.address, env={**env, "RAY_AUTH_TOKEN": "x" * 32})
    assert r.returncode == 1
    assert "was rejected" in r.stderr


def _succeeded(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "job finished: SUCCEEDED" in r.stderr
    return r.stdout.strip().splitlines()[-1]


def _clone_after_the_journey(root: Path) -> Path:
    """A project folder as a user's clone is after the README journey: its job specs, and data
    and outputs lying in it (the job reads the store from here, and uploads none of it)."""
    (root / "jobs").mkdir(parents=True)
    (root / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (root / "jobs" / "smoke.yaml").write_text(SMOKE_SPEC.read_text())
    (root / "pred").mkdir()
    (root / "pred" / "old.nii.gz").write_bytes(os.urandom(1 << 20))
    return root


@dataclass
class Pipeline:
    """What :func:`_preprocess_then_train` submitted from the clone, and what it answered."""

    clone: Path
    preprocess: subprocess.CompletedProcess
    train: subprocess.CompletedProcess | None  # None: not submitted (the preprocessing failed)


def _preprocess_then_train(head: Head) -> Pipeline:
    """From a clone holding the journey's outputs, ``-- data preprocess raw store`` (relative
    paths), then ``bratslab submit jobs/smoke.yaml --wait`` (relative data.store)."""
    clone = _clone_after_the_journey(head.work / "clone")
    os.symlink(head.work / "raw", clone / "raw")
    # The preprocessing job's own Ray driver joins this cluster (RAY_ADDRESS set by the job).
    pre = head.cli(
        "submit", "--address", head.address, "--wait", "--",
        "data", "preprocess", "raw", "store", "--min-size", "32", cwd=clone,
    )  # fmt: skip
    if pre.returncode != 0:
        return Pipeline(clone, pre, None)
    train = head.cli(
        "submit", "--address", head.address, "--wait", "jobs/smoke.yaml",
        "--set", "training.epochs=1", "--set", "training.steps_per_epoch=2",
        "--set", "data.max_val_cases=1", cwd=clone,
    )  # fmt: skip
    return Pipeline(clone, pre, train)


@pytest.fixture(scope="module")
def pipeline(head):
    """The pipeline's preprocessing and training jobs, submitted in a thread once the synth job
    has succeeded: the module's other tests (which submit, stop and list jobs of their own) run
    meanwhile, instead of waiting two minutes for them; the module's last test,
    :func:`test_pipeline_as_cluster_jobs_synth_preprocess_train`, asserts on what they did."""
    if head.first_submit.returncode != 0:
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    future: Future[Pipeline] = pool.submit(_preprocess_then_train, head)
    yield future
    pool.shutdown(wait=True)


def test_failed_job_makes_wait_exit_nonzero(head):
    r = head.cli(
        "submit", "--address", head.address, "--wait", "--",
        "data", "fingerprint", str(head.work / "no-such-store"),
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "job finished: FAILED" in r.stderr
    assert "no-such-store" in r.stderr  # the tail of the job's log explains the failure
    # A job that does not exist is "not found" (exit 2) for every jobs command.
    for command in ("status", "logs", "stop"):
        r = head.cli("jobs", command, "no-such-job", "--address", head.address)
        assert r.returncode == 2 and "no-such-job" in r.stderr, (command, r.stderr)


def test_stop_a_sleeping_job(head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = (head.home / ".ray" / "auth_token").read_text().strip()
    sdk = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})
    job_id = sdk.submit_job(entrypoint="echo sleeping; sleep 300")
    deadline = time.monotonic() + 120  # the pipeline's jobs may be running meanwhile
    while sdk.get_job_status(job_id) != JobStatus.RUNNING:
        assert time.monotonic() < deadline, "sleeping job never started"
        time.sleep(0.5)

    # Follow the logs in the background (websocket, same token) while the job is stopped.
    follower = subprocess.Popen(
        [str(BIN / "bratslab"), "jobs", "logs", job_id, "--follow", "--address", head.address],
        env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        r = head.cli("jobs", "stop", job_id, "--address", head.address, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "STOPPED" in r.stdout
        assert sdk.get_job_status(job_id) == JobStatus.STOPPED
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert "sleeping" in out
    assert follower.returncode == 1 and "job finished: STOPPED" in err
    r = head.cli("jobs", "status", job_id, "--address", head.address)
    assert r.returncode == 1 and "STOPPED" in r.stdout
    r = head.cli("jobs", "stop", job_id, "--address", head.address)
    assert r.returncode == 0 and "had already ended: STOPPED" in r.stdout


def test_dry_run_shows_what_a_cluster_would_receive(head):
    r = head.cli(
        "submit", "--dry-run", "--address", head.address, "--env", "EXTRA=1", "--",
        "data", "preprocess", "/data/raw", "/data/store",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["entrypoint"] == "bratslab data preprocess /data/raw /data/store"
    env = plan["runtime_env"]["env_vars"]
    assert env["EXTRA"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["MLFLOW_TRACKING_URI"] == head.env["MLFLOW_TRACKING_URI"]
    assert plan["runtime_env"]["working_dir"] == str(REPO)


def test_pipeline_as_cluster_jobs_synth_preprocess_train(head, pipeline):
    """Submitted as `ray start` was launched (no sleep): `-- data synth`; then, from a clone
    holding the journey's outputs, `-- data preprocess raw store` (relative paths) and
    `bratslab submit jobs/smoke.yaml --wait` (relative data.store): every job SUCCEEDED, the
    training read the clone's ./store, and the training job's MLflow run exists."""
    job_id = _succeeded(head.first_submit)
    assert "waiting for the Ray head" in head.first_submit.stderr  # it did not just sail in
    raw = head.work / "raw"
    assert job_id.startswith("bratslab-data-synth-")
    assert len(list(raw.rglob("*.nii.gz"))) == 4 * 5  # 4 modalities + seg per case

    r = head.cli("jobs", "logs", job_id, "--address", head.address)
    assert r.returncode == 0
    assert "bratslab data synth" in r.stdout  # Ray logs the entrypoint it ran

    done = pipeline.result()
    clone = done.clone
    _succeeded(done.preprocess)
    store = clone / "store"
    assert (store / "dataset.json").is_file()

    r = done.train
    job_id = _succeeded(r)
    assert job_id.startswith("bratslab-train-smoke-")
    size, unit = r.stderr.split(f"uploading {clone} (")[1].split(")")[0].split()
    assert unit == "KB" and float(size) < 100, r.stderr  # specs only: no store, no predictions

    r = head.cli("jobs", "status", job_id, "--address", head.address)
    assert r.returncode == 0 and "SUCCEEDED" in r.stdout
    r = head.cli("jobs", "list", "--address", head.address)
    assert r.returncode == 0 and job_id in r.stdout and "data-synth" in r.stdout

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=head.env["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name("bratslab-smoke")
    assert exp is not None, "the job logged no experiment to the forwarded tracking URI"
    runs = mlflow.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params.get("training.epochs") == "1"  # --set reached the job
    assert runs[0].data.params.get("data.store") == str(store)  # the clone's, verbatim
    assert "val/dice_mean" in runs[0].data.metrics

    r = head.cli("runs", "list", "--experiment", "bratslab-smoke")
    assert r.returncode == 0, r.stderr
    assert runs[0].info.run_id[:8] in r.stdout  # the table shows 8 characters of a run id
