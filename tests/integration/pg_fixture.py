"""A real, throw-away PostgreSQL server for integration tests (fixture ``postgres``).

The server binaries come from the system (Debian's ``postgresql`` package, installed by
``scripts/install-postgres.sh``); the Python side talks to it through psycopg 3 (the
``bratslab[postgres]`` extra). One server per test session: a fresh cluster in a temporary
folder, listening on 127.0.0.1 only (a free port; its Unix socket in that private folder), trust
authentication for 127.0.0.1 alone, databases ``mlflow`` and ``optuna``. It is stopped and its
folder removed when the session ends.

``initdb`` and ``postgres`` refuse to run as root, so as root both run as the ``postgres`` user
(or ``nobody``) through ``runuser``, on a folder handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "bratslab"  # the cluster's bootstrap role; connects without a password
DATABASES = ("mlflow", "optuna")
INSTALL_HINT = "run `bash scripts/install-postgres.sh` (Debian/Ubuntu package `postgresql`)"


@dataclass
class PostgresServer:
    """A running server: ``url("optuna")`` is a SQLAlchemy URL for one of its databases."""

    bindir: Path
    folder: Path
    port: int
    os_user: str | None  # the user the server runs as, when we are root
    host: str = "127.0.0.1"

    @property
    def datadir(self) -> Path:
        return self.folder / "data"

    @property
    def logfile(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb``, else ``initdb`` on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _server_user() -> str | None:
    """None when we are not root (the server runs as us), else an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither `postgres` nor `nobody` exists")


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    import shlex

    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(cmd)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], what: str, server: PostgresServer | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        log = f"\n--- server log ---\n{server.log_tail()}" if server else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")


def _init_cluster(bindir: Path, user: str | None) -> Path:
    """A new cluster in a private folder (owned by ``user`` when we are root)."""
    # As root, under /tmp: pytest's own temp root is private to root, and the server user must
    # be able to reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="bratslab-pg-", dir="/tmp" if user else None))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    init = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-locale", "--no-sync"]  # fmt: skip
    _run(_as_user(user, init), "initdb")
    # Password-less access over TCP from 127.0.0.1 only; no other host, no Unix-socket logins.
    hba = "# TYPE DATABASE USER ADDRESS METHOD\nhost all all 127.0.0.1/32 trust\n"
    (data / "pg_hba.conf").write_text(hba)
    if user:
        os.chown(data / "pg_hba.conf", entry.pw_uid, entry.pw_gid)
    return folder


def start_server(bindir: Path, attempts: int = 3) -> PostgresServer:
    """initdb + pg_ctl start on a free port (another if it was taken meanwhile) + databases."""
    user = _server_user()
    folder = _init_cluster(bindir, user)
    for attempt in range(attempts):
        server = PostgresServer(bindir, folder, _free_port(), user)
        # Throw-away data: no fsync, so the many small MLflow/Optuna commits cost nothing.
        opts = (f"-h {server.host} -p {server.port} -k {folder} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        start = [str(bindir / "pg_ctl"), "-D", str(server.datadir), "-l", str(server.logfile),
                 "-o", opts, "-w", "-t", "60", "start"]  # fmt: skip
        try:
            _run(_as_user(user, start), "pg_ctl start", server)
            break
        except RuntimeError:
            if attempt == attempts - 1:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    _create_databases(server)
    return server


def _create_databases(server: PostgresServer) -> None:
    import psycopg

    dsn = f"host={server.host} port={server.port} user={SUPERUSER} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in DATABASES:
            conn.execute(f"CREATE DATABASE {name}")


def stop_server(server: PostgresServer) -> None:
    """Stop the server (fast, then immediate) and remove its folder."""
    ctl = [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-w", "-t", "30", "stop"]
    for mode in ("fast", "immediate"):
        proc = subprocess.run(
            _as_user(server.os_user, [*ctl, "-m", mode]), capture_output=True, timeout=60
        )
        if proc.returncode == 0 or not (server.datadir / "postmaster.pid").exists():
            break
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session, with databases ``mlflow`` and ``optuna``.

    Skips (with the reason) when the psycopg driver or the server binaries are missing.
    """
    pytest.importorskip(
        "psycopg", reason="psycopg is not installed: install the `bratslab[postgres]` extra"
    )
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {INSTALL_HINT}")
    server = start_server(bindir)
    try:
        yield server
    finally:
        stop_server(server)
