"""A two-node Ray cluster on one machine: each node a Linux network namespace.

Node A (the head) and node B are namespaces joined by a veth pair on a private /30 chosen per
run (``10.254.x.y``): A is ``.y+1``, B ``.y+2``. Every listener (Ray's GCS, raylets, object
managers, dashboard; the SeaweedFS S3 server in A) binds inside a namespace; nothing is sent to
the host's own addresses. The filesystem is shared, as on a cluster with a shared home, so each
node gets its own ``BRATSLAB_STORE_CACHE`` (set in its ``ray start`` environment) to tell the
node-local store copies apart.

The cluster uses Ray's token authentication with a token of its own (``RAY_AUTH_TOKEN`` in
every process's environment), so ``~/.ray/auth_token`` is neither read nor written.

Clean-up never runs ``ray stop``: it stops every Ray process on the machine, other users'
included. Every process started inside a namespace (``ip netns pids``) is ended by its id, then
the namespaces are deleted, which removes the veth pair. :func:`skip_reason` says why the
machine cannot do this (not root, no ``ip netns``).

Run as a script inside node A (``ip netns exec A python netns.py workers``, with the driver's
``RAY_ADDRESS`` and token), it prints the cluster's nodes and Ray Train worker actors as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import s3_server

RAY = Path(sys.executable).with_name("ray")  # the venv's CLI: workers run this interpreter
BUCKET = "bratslab-2n"
STARTED = "Ray runtime started."
# Stripped from the environment every process of the cluster starts with (the test sets them).
_OWN_VARS = ("AWS_", "BRATSLAB_", "RAY_", "MLFLOW_TRACKING_URI")


def skip_reason() -> str | None:
    """Why this machine cannot run the two-node test, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (`ip netns`)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command not found"
    if s3_server.find_weed() is None:
        return f"SeaweedFS's `weed` binary not found; {s3_server.INSTALL_HINT}"
    probe = f"bl-probe-{os.getpid()}-{secrets.token_hex(2)}"
    added = _ip("netns", "add", probe)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _ip_ok(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Node:
    """A network namespace with one address on the pair's /30."""

    ns: str
    ip: str
    dev: str  # its end of the veth pair

    def cmd(self, *argv: str | os.PathLike) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def pids(self) -> list[int]:
        """Every process whose network namespace this is."""
        out = _ip("netns", "pids", self.ns).stdout
        return [int(p) for p in out.split()]


def _subnet() -> tuple[str, str]:
    """Two addresses of a /30 in 10.254.0.0/16 that no interface of the host uses."""
    host = _ip("-o", "-4", "addr").stdout
    while True:
        third, base = random.randrange(256), random.randrange(64) * 4
        if f" 10.254.{third}." not in host:
            return f"10.254.{third}.{base + 1}", f"10.254.{third}.{base + 2}"


def _end_processes(node: Node, grace: float = 3.0) -> None:
    """SIGTERM every process in ``node``'s namespace, SIGKILL what is left after ``grace``
    (the head's GCS, raylet and ``weed`` outlast a SIGTERM by more than 10 s; nothing in a
    throw-away namespace needs an orderly shutdown)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = node.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = node.pids()  # a zombie child of the test leaves the list when reaped
        if not pids:
            return


@contextlib.contextmanager
def node_pair() -> Iterator[tuple[Node, Node]]:
    """Two namespaces joined by a veth pair, loopback and link up; always removed on exit
    (after ending every process inside them)."""
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    ip_a, ip_b = _subnet()
    va, vb = f"bl{tag}a"[:15], f"bl{tag}b"[:15]
    a, b = Node(f"bl2n-{tag}-a", ip_a, va), Node(f"bl2n-{tag}-b", ip_b, vb)
    try:
        _ip_ok("netns", "add", a.ns)
        _ip_ok("netns", "add", b.ns)
        _ip_ok("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip_ok("link", "set", va, "netns", a.ns)
        _ip_ok("link", "set", vb, "netns", b.ns)
        for node in (a, b):
            _ip_ok("-n", node.ns, "addr", "add", f"{node.ip}/30", "dev", node.dev)
            _ip_ok("-n", node.ns, "link", "set", "lo", "up")
            _ip_ok("-n", node.ns, "link", "set", node.dev, "up")
        yield a, b
    finally:
        for node in (b, a):
            if node.ns in _ip("netns", "list").stdout.split():
                _end_processes(node)
                _ip("netns", "del", node.ns)
        _ip("link", "del", va)  # only if creating the pair failed before it moved


@dataclass
class Cluster:
    """The running cluster: Ray head in A, a worker node in B, an S3 server in A."""

    a: Node
    b: Node
    folder: Path
    ray_port: int
    s3_port: int
    token: str = field(repr=False)
    caches: dict[str, Path] = field(default_factory=dict)  # node ip → its BRATSLAB_STORE_CACHE
    processes: list[subprocess.Popen] = field(default_factory=list)  # reaped on exit

    @property
    def address(self) -> str:
        return f"{self.a.ip}:{self.ray_port}"

    def base_env(self) -> dict[str, str]:
        """This environment without the test-controlled variables, plus the cluster's token
        and the S3 server's ``AWS_*`` variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARS)}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            MLFLOW_DISABLE_TELEMETRY="true",
            OMP_NUM_THREADS="1",
            **s3_server.client_env(self.a.ip, self.s3_port),
        )
        return env

    def driver_env(self, home: Path) -> dict[str, str]:
        """A driver on node A that joins the cluster. No ``BRATSLAB_STORE_CACHE``: a driver's
        value would reach every worker through the runtime env and hide the nodes' own."""
        return {**self.base_env(), "RAY_ADDRESS": self.address, "BRATSLAB_HOME": str(home)}

    def start_ray(self, node: Node, num_cpus: int, resources: dict[str, float]) -> None:
        """``ray start --block`` on ``node`` (the head when it is node A); returns once it
        says it started."""
        head = node == self.a
        cache = self.caches.setdefault(node.ip, self.folder / f"cache-{node.ns[-1]}")
        temp = self.folder / f"ray-{node.ns[-1]}"
        argv = [RAY, "start", "--block", "--node-ip-address", node.ip, "--temp-dir", temp]
        argv += ["--num-cpus", str(num_cpus), "--resources", json.dumps(resources)]
        argv += ["--object-store-memory", str(256 << 20), "--disable-usage-stats"]
        if head:
            argv += ["--head", "--port", str(self.ray_port), "--dashboard-host", node.ip]
        else:
            argv += ["--address", self.address]
        env = {
            **self.base_env(),
            "BRATSLAB_STORE_CACHE": str(cache),
            # Gloo binds to the address the hostname resolves to, and falls back to 127.0.0.1
            # when that is not on this node (here: the host's address, outside the namespace);
            # the ranks would then tell each other to connect to loopback. Name the node's
            # interface, as on any machine whose hostname does not resolve to its cluster IP.
            "GLOO_SOCKET_IFNAME": node.dev,
            # Ray Train's placement-group cleaner looks its cluster up through the state API;
            # without an address it scans the machine's processes for GCS servers and finds
            # every other Ray instance on this (shared) machine too.
            "RAY_ADDRESS": self.address,
        }
        log = self.folder / f"ray-start-{node.ns[-1]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(node.cmd(*argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.processes.append(proc)
        _wait_for_line(proc, log, STARTED, timeout=120)

    def run_in_a(self, argv: list, env: dict[str, str], cwd: Path, timeout: float):
        """Run ``argv`` inside node A; output captured as text."""
        return subprocess.run(
            self.a.cmd(*argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )

    def workers(self) -> dict:
        """``{"nodes": [...], "workers": [...]}`` from Ray's state API, queried in node A."""
        argv = [sys.executable, Path(__file__).resolve(), "workers"]
        done = self.run_in_a(argv, self.driver_env(self.folder), self.folder, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"state query failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def _wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[4:7]} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 2) -> Iterator[Cluster]:
    """Namespaces, the S3 server (bucket :data:`BUCKET`) in A, Ray's head in A and a worker
    node in B (custom resource ``node_b``); everything stopped and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="bl2n-", dir="/tmp"))  # short: Ray's socket paths
    s3_ports = s3_server.free_ports()
    processes: list[subprocess.Popen] = []
    try:
        with node_pair() as (a, b):
            cluster = Cluster(
                a,
                b,
                folder,
                random.randrange(20000, 30000),
                s3_ports["s3"],
                secrets.token_hex(32),
                processes=processes,
            )
            processes.append(s3_server.start_weed(folder / "s3", a.ip, s3_ports, wrap=a.cmd()))
            endpoint = s3_server.client_env(a.ip, s3_ports["s3"])["AWS_ENDPOINT_URL"]
            script = Path(s3_server.__file__).resolve()
            made = cluster.run_in_a(
                [sys.executable, script, "create-bucket", endpoint, BUCKET],
                cluster.base_env(),
                folder,
                timeout=90,
            )
            if made.returncode != 0:
                log = (folder / "s3" / "weed.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"S3 server in {a.ns}: {made.stderr}\n{log}")
            cluster.start_ray(a, cpus_per_node, {"node_a": 1})
            cluster.start_ray(b, cpus_per_node, {"node_b": 1})
            yield cluster
    finally:
        for proc in processes:  # ended with their namespace; reap them
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        s3_server.remove_sockets(s3_ports)
        shutil.rmtree(folder, ignore_errors=True)


def _print_workers() -> None:
    """Print the nodes and the Ray Train worker actors (alive or dead) as one JSON line."""
    import ray
    from ray.util.state import list_actors

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    nodes = [
        {
            "node_id": n["NodeID"],
            "ip": n["NodeManagerAddress"],
            "alive": n["Alive"],
            "resources": n["Resources"],
        }
        for n in ray.nodes()
    ]
    actors = list_actors(detail=True, limit=1000, raise_on_missing_output=False)
    workers = [
        {"node_id": a.node_id, "state": a.state, "pid": a.pid, "class_name": a.class_name}
        for a in actors
        if "TrainWorker" in a.class_name
    ]
    print(json.dumps({"nodes": nodes, "workers": workers}))


if __name__ == "__main__":
    if sys.argv[1:] != ["workers"]:
        sys.exit("usage: netns.py workers")
    _print_workers()
