"""A real, throw-away ``mlflow server`` on 127.0.0.1 for integration tests.

:func:`mlflow_server` starts ``mlflow server`` with a SQLite backend in a folder and proxied
artifacts (``--serve-artifacts``) written to ``--artifacts-destination`` (a folder or an
``s3://bucket/prefix``), on a free port, waits for ``/health``, and stops it with its workers
(its own process group) afterwards. The server runs in that folder, so an artifact written to
local disk by mistake would land there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited early:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy starting up
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group, started here)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(
    root: Path, artifacts_destination: str, env: Mapping[str, str] = ()
) -> Iterator[str]:
    """Run ``mlflow server`` in ``root`` (``server.db``, ``server.log``); yields its URL.

    ``env`` is added to this process's environment minus every ``AWS_*`` and ``MLFLOW_*``
    variable (e.g. ``MLFLOW_S3_ENDPOINT_URL`` and the keys of an ``s3://`` destination: only the
    server gets them).
    """
    root.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), root / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    # No job runner (MLflow's GenAI jobs, unused here): one process less to start, and without
    # it the server exits on SIGTERM at once instead of lingering until SIGKILL.
    quiet = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    full_env = {**base, **quiet, **dict(env)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop(proc)
