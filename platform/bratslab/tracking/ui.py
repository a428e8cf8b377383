"""``bratslab ui``: the MLflow UI over the store bratslab writes to, on loopback by default."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from bratslab.settings import Settings


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_command(settings: Settings, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line serving ``settings``' tracking store.

    The embedded store keeps artifacts in plain folders (each experiment records its own
    location under ``settings.artifacts``), so the server reads them in place:
    ``--default-artifact-root`` is that folder and artifact proxying is off. One worker:
    it is a personal UI, and SQLite prefers a single writer.
    """
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        "--default-artifact-root",
        settings.artifacts.as_uri(),
        "--no-serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def wait_until_serving(
    proc: subprocess.Popen, url: str, timeout_s: float = 180.0, poll_s: float = 0.25
) -> bool:
    """True once ``url``/health answers 200; False when ``proc`` exits first or time runs out."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:  # not listening yet
            pass
        time.sleep(poll_s)
    return False


def serve(cmd: list[str], url: str, on_ready: Callable[[], None], env=None) -> tuple[int, bool]:
    """Run the server ``cmd`` until it exits or this process is told to stop; ``on_ready`` is
    called once it answers at ``url`` (so the URL a user is shown already works).

    SIGTERM and SIGINT are passed on to the server. Returns its exit status and whether it
    ever answered (False: it failed to start, e.g. the port is taken).
    """
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ready = wait_until_serving(proc, url)
        if ready:
            on_ready()
        elif proc.poll() is None:
            proc.terminate()
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code, ready
