"""Where Ray's own processes spend CPU while a training run goes on (for ``bench_train.py``).

:class:`RayCpuSampler` polls every process whose command line names Ray (the GCS, the raylet,
the Train controller, Ray Data's coordinators, Ray Train's placement-group cleaner, ...) every
``interval_s``: by default only this process's descendants, i.e. the local Ray instance this
process started (``ray.init`` forks the GCS, raylet and agents; the raylet forks the workers),
so other Ray instances on a shared machine are left out (``own_only=False``: all of them),
and keeps each one's latest cumulative CPU time, so a process that exits mid-run keeps what it
used. :meth:`RayCpuSampler.by_kind` then sums the CPU seconds used *during* the sampled window
per kind of process, or during a part of it (``window``: e.g. the steady-state epochs, without
start-up and shutdown). On a machine with as many torch threads as cores, every CPU second a
daemon uses is taken from the training step.
The sampler's own CPU (a thread of the calling process) is kept in ``own_cpu_s``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

IDLE = ("ray::IDLE", "ray::(idle worker)")


def kind_of(cmdline: list[str]) -> str | None:
    """A short name for a Ray process, or None for processes that are not Ray's."""
    if not cmdline:
        return None
    first = cmdline[0]
    if first.startswith("ray::"):  # actors and tasks: ray::TrainController, ray::IDLE, ...
        name = first[5:].split(" ")[0]
        return "ray::" + re.split(r"[.(]", name)[0]
    base = os.path.basename(first)
    if base in ("gcs_server", "raylet"):
        return base
    joined = " ".join(cmdline)
    for marker in ("log_monitor", "dashboard/agent", "runtime_env/agent", "monitor.py"):
        if marker in joined and "ray" in joined:
            return marker.split("/")[0]
    if "ray/_private/workers/default_worker.py" in joined:
        return "ray::(idle worker)"
    return None


class RayCpuSampler:
    """Poll Ray processes' CPU time in a background thread between ``start()`` and ``stop()``."""

    def __init__(
        self, interval_s: float = 0.5, exclude: tuple[int, ...] = (), own_only: bool = True
    ) -> None:
        self.interval_s = interval_s
        self.own_only = own_only
        self.exclude = set(exclude) | {os.getpid()}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.history: list[tuple[float, dict[int, float]]] = []  # (time.time(), CPU per pid)
        self.own_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import psutil  # Ray's bundled copy (on sys.path once ray is imported)

        c0 = time.thread_time()
        now: dict[int, float] = {}
        for pid, cmdline, t in self._processes(psutil):
            if pid in self.exclude or t is None:
                continue
            # A worker process is first an idle worker, then names itself after the actor or
            # task it runs: the last specific name wins.
            kind = kind_of(cmdline or [])
            if kind is None or kind in IDLE:
                kind = self.kinds.get(pid, kind)
            if kind is None:
                continue
            cpu = t.user + t.system
            self.kinds[pid] = kind
            self.first.setdefault(pid, cpu)
            self.last[pid] = cpu
            now[pid] = cpu
        self.history.append((time.time(), now))
        self.own_cpu_s += time.thread_time() - c0

    def _processes(self, psutil):
        """``(pid, cmdline, cpu_times)`` of the processes to look at (None where unreadable)."""
        if not self.own_only:
            for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
                yield p.info["pid"], p.info["cmdline"], p.info["cpu_times"]
            return
        for p in psutil.Process().children(recursive=True):
            try:
                with p.oneshot():
                    yield p.pid, p.cmdline(), p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(self.interval_s)

    def start(self) -> RayCpuSampler:
        self._poll()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_kind(self, window: tuple[float, float] | None = None) -> dict[str, float]:
        """CPU seconds per process kind used between start and stop (largest first), or
        between the ``time.time()`` instants ``window`` (to the nearest polls before them; a
        process first seen inside the window counts from 0)."""
        if window is None:
            first, last = self.first, self.last
        else:
            first, last = self._at(window[0]), self._at(window[1])
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in last.items():
            out[self.kinds[pid]] += cpu - first.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _at(self, t: float) -> dict[int, float]:
        """Each process's latest cumulative CPU time polled at or before ``t``."""
        seen: dict[int, float] = {}
        for when, cpus in self.history:
            if when > t:
                break
            seen.update(cpus)
        return seen
