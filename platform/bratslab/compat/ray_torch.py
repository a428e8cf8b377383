"""Ray Train's torch process group with its sockets bound to the node's address (ray 2.60.x).

Ray Train's torch backend (``ray.train.torch.config._TorchBackend.on_start``) picks
``MASTER_ADDR`` = rank 0's Ray node address and lets ``init_process_group("env://")`` create
rank 0's rendezvous ``TCPStore``, whose server listens on *every* interface (``*:PORT``) whatever
``MASTER_ADDR`` says; gloo binds its pair sockets to the address the host name resolves to, which
may be an external interface. On the embedded instance (127.0.0.1) that made each training run
reachable from the network.

:class:`NodeBoundTorchConfig` replaces ``on_start`` only: rank 0 binds the store's listening
socket to its Ray node address (127.0.0.1 on the embedded instance; on a cluster the node's IP,
where the other ranks connect anyway) and hands it to ``TCPStore(master_listen_fd=...)``; every
rank points gloo (``GLOO_SOCKET_IFNAME``) and NCCL's bootstrap (``NCCL_SOCKET_IFNAME``) at the
interface holding its node address, unless the user set them. Everything else (shutdown, the
per-worker environment) is Ray's. Private detail: ``_TorchBackend`` and the helpers
``_set_torch_distributed_env_vars``/``_is_backend_nccl`` of ``ray.train.torch.config``. Public
replacement: none (``TorchConfig`` has no bind-address option, ``TCPStore`` no bind host).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import _is_backend_nccl, _set_torch_distributed_env_vars, _TorchBackend

log = logging.getLogger(__name__)

_HOSTED: dict[str, Any] = {}  # rank 0's store server: lives as long as the worker process


def node_address() -> str:
    """This Ray worker's node address (what Ray Train uses as ``MASTER_ADDR``)."""
    import ray

    return ray.util.get_node_ip_address()


def interface_of(address: str) -> str | None:
    """The name of the local network interface that holds ``address``, if any."""
    import ray  # noqa: F401, I001  (Ray puts its bundled psutil on sys.path)
    import psutil  # noqa: I001

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def listen_on(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` (a free port); on every interface only when the
    address is not local to this machine (a NAT'd node), with a warning."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
    except OSError as e:
        log.warning("cannot bind the rendezvous store to %s (%s); it listens on all", address, e)
        sock.bind(("", 0))
    sock.listen(128)
    return sock


def host_store(timeout_s: float) -> tuple[str, int]:
    """Rank 0: start the rendezvous store server on the node address; its ``(address, port)``."""
    import torch.distributed as dist

    address = node_address()
    sock = listen_on(address)
    port = sock.getsockname()[1]
    _HOSTED["store"] = dist.TCPStore(
        address,
        port,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.detach(),  # the store owns the bound socket from here on
    )
    return address, port


def join_group(
    backend: str, world_rank: int, world: int, address: str, port: int, timeout_s: float
) -> None:
    """Every rank: the environment Ray Train sets, then the default process group."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    _set_torch_distributed_env_vars()
    iface = interface_of(node_address())
    if iface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", iface)
    if _is_backend_nccl(backend):  # as Ray does: fail instead of hanging on a timed-out op
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    store = _HOSTED["store"] if world_rank == 0 else None
    if store is None:
        store = dist.TCPStore(address, port, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend=backend, store=store, rank=world_rank, world_size=world, timeout=timeout
    )


class NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        import ray

        backend = backend_config.backend or "gloo"
        timeout = backend_config.timeout_s
        address, port = worker_group.execute_single(0, host_store, timeout_s=timeout)
        world = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    join_group,
                    backend=backend,
                    world_rank=rank,
                    world=world,
                    address=address,
                    port=port,
                    timeout_s=timeout,
                )  # fmt: skip
                for rank in range(world)
            ]
        )


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group listens on the node's address only (see module)."""

    @property
    def backend_cls(self):
        return NodeBoundTorchBackend
