"""The process-group pieces of :mod:`bratslab.compat.ray_torch`, in-process (no Ray instance):
the rendezvous store listens on the address it is given only, and the config still plugs into
Ray Train's torch backend as checked (ray 2.60)."""

from __future__ import annotations

from datetime import timedelta


def test_the_rendezvous_store_listens_on_the_node_address_only():
    import ray  # noqa: F401, I001  (Ray puts its bundled psutil on sys.path)
    import psutil  # noqa: I001
    import torch.distributed as dist

    from bratslab.compat.ray_torch import interface_of, listen_on

    sock = listen_on("127.0.0.1")
    port = sock.getsockname()[1]
    timeout = timedelta(seconds=30)
    server = dist.TCPStore(
        "127.0.0.1", port, is_master=True, timeout=timeout, wait_for_workers=False,
        master_listen_fd=sock.detach(),
    )  # fmt: skip
    client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    client.set("rank1", "ready")
    assert server.get("rank1") == b"ready"
    listening = [
        c.laddr
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}  # not *:PORT
    assert interface_of("127.0.0.1")  # gloo's GLOO_SOCKET_IFNAME for the embedded instance
    assert interface_of("192.0.2.250") is None  # TEST-NET: on no interface here


def test_the_config_replaces_only_the_start_of_ray_trains_torch_backend():
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    from bratslab.compat.ray_torch import NodeBoundTorchBackend, NodeBoundTorchConfig

    cfg = NodeBoundTorchConfig(backend="gloo")
    assert isinstance(cfg, TorchConfig) and cfg.backend_cls is NodeBoundTorchBackend
    assert issubclass(NodeBoundTorchBackend, _TorchBackend)
    assert "on_start" in NodeBoundTorchBackend.__dict__
    assert "on_shutdown" not in NodeBoundTorchBackend.__dict__  # Ray's own teardown
