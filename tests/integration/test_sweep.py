"""Placement groups that Tune's ASHA stops leave behind are removed, on a real Ray instance.

The sweep itself (Tune + OptunaSearch + ASHA over Ray Train trials, stopped, resumed, TTA
re-evaluated and registered) runs as ``bratslab sweep`` subprocesses in ``test_sweep_kill.py``
(SIGKILL, SIGTERM) and ``test_postgres.py`` (Ctrl-C, stores in PostgreSQL and S3).
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def test_placement_groups_of_dead_controllers_are_removed(ray_cluster):
    """What an ASHA stop leaves behind (a placement group whose creating actor died) is
    removed; groups of live actors and of the driver stay."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from bratslab.tune.placement_groups import remove_orphaned_placement_groups

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    dead, alive = Controller.remote(), Controller.remote()
    dead_pg = ray.get(dead.reserve.remote())
    alive_pg = ray.get(alive.reserve.remote())
    driver_pg = placement_group([{"CPU": 1}])
    ray.get(driver_pg.ready())
    ray.kill(dead)
    deadline = time.monotonic() + 30
    while remove_orphaned_placement_groups() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    table = ray.util.placement_group_table()
    assert table[dead_pg]["state"] == "REMOVED"
    assert table[alive_pg]["state"] == "CREATED"
    assert table[driver_pg.id.hex()]["state"] == "CREATED"
    remove_placement_group(driver_pg)
    ray.kill(alive)  # and its group goes the same way, freeing the session's CPUs
    deadline = time.monotonic() + 30
    while remove_orphaned_placement_groups() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.util.placement_group_table()[alive_pg]["state"] == "REMOVED"
