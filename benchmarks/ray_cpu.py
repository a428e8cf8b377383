"""Where Ray's own processes spend CPU while a training run goes on (for ``bench_train.py``).

:class:`RayCpuSampler` polls every process of this machine whose command line names Ray (the
GCS, the raylet, the Train controller, Ray Data's coordinators, Ray Train's placement-group
cleaner, ...) every ``interval_s`` and keeps each one's latest cumulative CPU time, so a
process that exits mid-run keeps what it used. :meth:`RayCpuSampler.by_kind` then sums the
CPU seconds used *during* the sampled window per kind of process. On a machine with as many
torch threads as cores, every CPU second a daemon uses is taken from the training step.
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

    def __init__(self, interval_s: float = 0.5, exclude: tuple[int, ...] = ()) -> None:
        self.interval_s = interval_s
        self.exclude = set(exclude) | {os.getpid()}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import psutil  # Ray's bundled copy (on sys.path once ray is imported)

        for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            pid = p.info["pid"]
            if pid in self.exclude or p.info["cpu_times"] is None:
                continue
            # A worker process is first an idle worker, then names itself after the actor or
            # task it runs: the last specific name wins.
            kind = kind_of(p.info["cmdline"] or [])
            if kind is None or kind in IDLE:
                kind = self.kinds.get(pid, kind)
            if kind is None:
                continue
            t = p.info["cpu_times"]
            cpu = t.user + t.system
            self.kinds[pid] = kind
            self.first.setdefault(pid, cpu)
            self.last[pid] = cpu

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

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per process kind used between start and stop (largest first)."""
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in self.last.items():
            out[self.kinds[pid]] += cpu - self.first[pid]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
