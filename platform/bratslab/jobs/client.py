"""Talking to a Ray cluster's Jobs API: addresses, an authenticated client that waits for a
starting head, and watching jobs until they end.

What is submitted (job plans, paths, the working-dir package) lives in :mod:`bratslab.jobs.submit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlparse

from bratslab.config import ConfigError
from bratslab.jobs.auth import AuthTokenError, auth_headers, missing_token_message

log = logging.getLogger(__name__)

#: The Ray dashboard (Jobs API) port; infra/kuberay's head Service exposes the same one.
DASHBOARD_PORT = 8265
DEFAULT_ADDRESS = f"http://127.0.0.1:{DASHBOARD_PORT}"

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

#: How long ``submit`` and ``jobs`` wait for a head that is still starting, in seconds.
HEAD_WAIT_ENV = "BRATSLAB_HEAD_WAIT_S"
DEFAULT_HEAD_WAIT_S = 60.0
#: Answers of a head whose dashboard or job agent is not up yet (worth waiting for).
STARTING_SIGNS = ("No available agent", "Failed to connect to Ray at address", "Connection refused")


class JobsError(RuntimeError):
    """A job could not be submitted or queried; the message says why and what to do."""


class JobNotFound(JobsError):
    """The cluster has no job of that submission id (the CLI's "not found": exit 2)."""


# --------------------------------------------------------------------------- addresses


def resolve_address(address: str | None = None) -> str:
    """The dashboard URL to talk to: ``address``, ``$RAY_API_SERVER_ADDRESS``, an http(s)
    ``$RAY_ADDRESS``, or :data:`DEFAULT_ADDRESS`. A bare ``host:port`` gets ``http://``."""
    candidates = [address, os.environ.get("RAY_API_SERVER_ADDRESS")]
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        candidates.append(ray_address)
    chosen = next((c for c in candidates if c), DEFAULT_ADDRESS).rstrip("/")
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    if not chosen.startswith(("http://", "https://")):
        raise JobsError(
            f"{chosen}: the Jobs API needs the dashboard's http(s) URL, "
            f"e.g. {DEFAULT_ADDRESS} (not a ray:// or GCS address)"
        )
    return chosen


def is_loopback(address: str) -> bool:
    """True when ``address`` points at this machine (a cluster sharing our filesystem)."""
    host = urlparse(address).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def runs_on_this_machine(address: str) -> bool:
    """True when ``address`` is the dashboard of a Ray cluster running on this machine, whose
    jobs therefore see our files.

    A loopback address alone does not tell: ``kubectl port-forward`` and ``ray dashboard``
    (an SSH tunnel) listen on 127.0.0.1 too and lead to remote clusters. So we look at the
    process listening on the port: Ray's own dashboard, or something else.
    """
    if not is_loopback(address):
        return False
    import ray  # noqa: F401, I001  (Ray puts its bundled psutil on sys.path)
    import psutil  # noqa: I001

    port = urlparse(address).port or (443 if address.startswith("https") else 80)
    try:
        listeners = [
            c.pid
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
        ]
        cmdline = " ".join(psutil.Process(listeners[0]).cmdline()) if listeners else ""
    except (psutil.Error, OSError):
        return False
    return "ray" in cmdline and "dashboard" in cmdline


# --------------------------------------------------------------------------- client


@contextmanager
def _explained(address: str) -> Iterator[None]:
    """Turn the SDK's connection and authentication failures into actionable messages."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthTokenError as e:
        raise JobsError(f"{address}: {e}") from None
    except AuthenticationError as e:
        raise JobsError(missing_token_message(address, str(e).split("\n")[0])) from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise JobsError(
            f"cannot reach the Ray dashboard at {address}: is the cluster up, and is this its "
            f"dashboard URL (--address, default {DEFAULT_ADDRESS})?"
        ) from None
    except RuntimeError as e:  # the SDK's "Request failed with status code 404: ..." etc.
        if "status code 404" in str(e):  # "Job <id> does not exist"
            raise JobNotFound(f"{address}: {e}") from None
        raise JobsError(f"{address}: {e}") from None


def head_wait_s() -> float:
    """Seconds to wait for a starting head: ``$BRATSLAB_HEAD_WAIT_S`` or 60."""
    raw = os.environ.get(HEAD_WAIT_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_HEAD_WAIT_S
    except ValueError:
        raise ConfigError(f"{HEAD_WAIT_ENV}={raw!r}: expected a number of seconds") from None


def _head_starting(err: Exception) -> bool:
    """True for the answers of a head that is starting: its dashboard refuses connections, or
    it has no job agent yet (HTTP 500 "No available agent to submit job")."""
    return any(sign in str(err) for sign in STARTING_SIGNS)


def _patiently(
    action: Callable[[], object], address: str, wait_s: float, on_wait: Callable[[str], None]
):
    """``action()``, retried with backoff while the head at ``address`` is still starting, for
    up to ``wait_s`` seconds; any other error (or the last one) is raised at once."""
    deadline = time.monotonic() + wait_s
    delay, announced = 0.5, False
    while True:
        try:
            return action()
        except Exception as e:  # noqa: BLE001 - filtered by _head_starting, re-raised otherwise
            if not _head_starting(e) or time.monotonic() + delay > deadline:
                raise
            if not announced:
                on_wait(f"waiting for the Ray head at {address} to accept jobs (≤ {wait_s:.0f} s)")
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class Jobs:
    """A connected Jobs API client; every call explains auth and connection failures, and waits
    (up to ``wait_s``) while the head is still starting."""

    address: str
    client: object = field(repr=False)
    wait_s: float = 0.0
    on_wait: Callable[[str], None] = field(default=log.warning, repr=False)

    def call(self, method: str, *args, **kwargs):
        with _explained(self.address):
            return _patiently(
                lambda: getattr(self.client, method)(*args, **kwargs),
                self.address,
                self.wait_s,
                self.on_wait,
            )


def connect(
    address: str | None = None,
    *,
    wait_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Jobs:
    """A :class:`Jobs` client for the cluster at ``address`` (see :func:`resolve_address`),
    authenticated with the Ray token when one is available.

    A head that is still starting (connection refused, "No available agent") is waited for, with
    backoff, up to ``wait_s`` seconds (default :func:`head_wait_s`); ``on_wait`` is told once.
    """
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    wait_s = head_wait_s() if wait_s is None else wait_s
    on_wait = on_wait or log.warning
    with _explained(url):
        headers = auth_headers()
        client = _patiently(lambda: JobSubmissionClient(url, headers=headers), url, wait_s, on_wait)
    return Jobs(url, client, wait_s, on_wait)


# --------------------------------------------------------------------------- watching


def wait(
    jobs: Jobs,
    job_id: str,
    *,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    on_change: Callable[[str], None] | None = None,
) -> str:
    """Block until the job reaches SUCCEEDED, FAILED or STOPPED; returns that status name.

    Raises:
        JobsError: ``timeout_s`` passed first (the job keeps running).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        status = str(jobs.call("get_job_status", job_id))
        if status != last and on_change:
            on_change(status)
        last = status
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise JobsError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def follow(jobs: Jobs, job_id: str, out: TextIO | None = None) -> str:
    """Stream the job's logs to ``out`` until it ends; returns its final status name."""
    out = out or sys.stdout

    async def pump() -> None:
        async for chunk in jobs.client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with _explained(jobs.address):
        asyncio.run(pump())
    # The log stream closes when the job ends; the status may lag by a moment.
    return wait(jobs, job_id, poll_s=0.5)
