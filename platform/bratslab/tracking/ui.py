"""``bratslab ui``: the MLflow UI over the store bratslab writes to, on loopback by default."""

from __future__ import annotations

import ipaddress
import sys

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
