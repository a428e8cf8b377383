"""What listens while a run trains: the TCP listeners of this process's tree, sampled.

The session's Ray instance is a child of the test process (its raylet starts every worker,
Ray Train's included), so ``psutil.Process().children(recursive=True)`` covers the driver, Ray's
own services and every worker of a run, also of a ``bratslab`` subprocess that joins it with
``RAY_ADDRESS``. :class:`ListenerWatch` samples them in a thread while a run goes on; a test then
asserts that none of them listened beyond loopback.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (``::ffff:127.0.0.1``, a dual-stack socket
    bound to 127.0.0.1)."""
    ip = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@dataclass
class ListenerWatch:
    """Samples every ``interval_s`` the listening TCP sockets of this process and its
    descendants: ``seen`` maps ``(pid, host, port)`` to the process's title when first seen
    (for a Ray worker first seen idle, the title it took after)."""

    interval_s: float = 0.2
    samples: int = 0
    seen: dict[tuple[int, str, int], str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ListenerWatch:
        self._thread = threading.Thread(target=self._run, name="listener-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        psutil = _psutil()
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                tree = me.children(recursive=True)
            except psutil.Error:  # a process ended while the tree was read: read it again
                continue
            self.sample([me, *tree])
            self.samples += 1
            self._stop.wait(self.interval_s)

    def sample(self, procs) -> None:
        psutil = _psutil()
        for p in procs:
            try:
                title = " ".join(p.cmdline())[:80]
                conns = p.net_connections(kind="tcp")
            except psutil.Error:  # exited meanwhile, or not ours to inspect
                continue
            for c in conns:
                key = (p.pid, c.laddr.ip, c.laddr.port)
                # A Ray worker listens while still ``ray::IDLE`` (starting up) and takes its
                # actor's title later: keep the later, telling title.
                if c.status == psutil.CONN_LISTEN and self.seen.get(key, "ray::IDLE").startswith(
                    "ray::IDLE"
                ):
                    self.seen[key] = title

    def by(self, title_prefix: str) -> dict[tuple[int, str, int], str]:
        """The listeners of processes whose title starts with ``title_prefix``."""
        return {k: t for k, t in list(self.seen.items()) if t.startswith(title_prefix)}

    def beyond_loopback(self) -> dict[tuple[int, str, int], str]:
        return {k: t for k, t in list(self.seen.items()) if not is_loopback(k[1])}


def _psutil():
    import ray  # noqa: F401, I001  (Ray puts its bundled psutil on sys.path)
    import psutil  # noqa: I001

    return psutil
