"""The private APIs behind bratslab.compat still have the shape they were checked against.

Each test fails loudly (not with a silent fallback) when a dependency upgrade moves them.
"""

from __future__ import annotations

import torch

from bratslab.compat import ray_core, torch_ops


def test_mkldnn_bf16_probe_exists_and_agrees():
    assert hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"), "torch moved the bf16 probe"
    want = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert torch_ops.mkldnn_bf16_supported() is (want and torch.backends.mkldnn.is_available())


def test_ray_cluster_constant_exists_and_follows_the_variable(monkeypatch):
    from ray._private import ray_constants

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool), "Ray moved ENABLE_RAY_CLUSTER"
    saved = ray_constants.ENABLE_RAY_CLUSTER
    try:
        monkeypatch.delenv(ray_core.ENV, raising=False)
        ray_core.bind_single_machine_to_loopback()
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        monkeypatch.setenv(ray_core.ENV, "1")
        ray_core.bind_single_machine_to_loopback()
        assert ray_constants.ENABLE_RAY_CLUSTER is True
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def test_remove_job_placement_groups_frees_this_jobs_cpus_only(ray_cluster):
    """A stopping driver hands back its job's placement groups (and their CPUs), all of them."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from bratslab.compat.ray_core import remove_job_placement_groups

    groups = [placement_group([{"CPU": 1}]) for _ in range(2)]
    ray_cluster.get([g.ready() for g in groups], timeout=60)
    # Each group holds its CPU. (Checked on the groups, not on the instance's free CPUs: this
    # session's instance may still be handing back an earlier test's CPUs meanwhile.)
    table = ray_cluster.util.placement_group_table()
    for g in groups:
        assert table[g.id.hex()]["state"] == "CREATED"
        assert table[g.id.hex()]["bundles"] == {0: {"CPU": 1.0}}
    try:
        assert remove_job_placement_groups() >= 2
        table = ray_cluster.util.placement_group_table()
        assert all(table[g.id.hex()]["state"] == "REMOVED" for g in groups)
        assert remove_job_placement_groups() == 0  # removed ones are not counted again
    finally:
        for g in groups:
            if ray_cluster.util.placement_group_table()[g.id.hex()]["state"] != "REMOVED":
                remove_placement_group(g)
