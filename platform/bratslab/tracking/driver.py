"""Which process drives a run, and whether it is still alive.

A driver killed with SIGKILL cannot mark its MLflow run: the run stays RUNNING until the same
command is rerun. So every run records its driver when it starts (or resumes) as the tag
``bratslab.driver``: ``{"pid", "host", "start"}``, where ``start`` is the process's start time
(``/proc/<pid>/stat`` field 22, clock ticks since boot), which tells the driver apart from a
later process that reuses its pid. :func:`driver_gone` checks it on the same host (a driver on
another host cannot be seen from here: it counts as alive). ``bratslab runs list`` then shows
such a run as ``RUNNING (driver gone)``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

TAG_DRIVER = "bratslab.driver"


def _start_ticks(pid: int) -> tuple[int, str] | None:
    """``(start time, state letter)`` of ``pid`` from ``/proc``; None if there is no such
    process (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return int(fields[19]), fields[0]


def driver_tag() -> dict[str, str]:
    """``{TAG_DRIVER: json}`` describing this process."""
    pid = os.getpid()
    found = _start_ticks(pid)
    info = {"pid": pid, "host": socket.gethostname(), "start": found[0] if found else None}
    return {TAG_DRIVER: json.dumps(info, sort_keys=True)}


def driver_gone(tags: Mapping[str, str]) -> bool:
    """True when the run's recorded driver ran on this host and is no longer alive (no such
    pid, a zombie, or another process under its pid). False when unknown: no tag, another
    host, or a platform without ``/proc`` where the pid still exists."""
    try:
        info = json.loads(tags.get(TAG_DRIVER) or "")
        pid, host, start = int(info["pid"]), info["host"], info.get("start")
    except (ValueError, TypeError, KeyError):
        return False
    if host != socket.gethostname():
        return False
    found = _start_ticks(pid)
    if found is not None:
        ticks, state = found
        return state in ("Z", "X") or (start is not None and ticks != start)
    if Path("/proc/self/stat").exists():
        return True  # /proc works and has no such pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
