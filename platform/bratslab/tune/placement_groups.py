"""Placement groups left behind by trials that ASHA stopped, and their removal."""

from __future__ import annotations

import logging

from bratslab.compat.ray_tune import PlacementGroupRecord, placement_group_records

log = logging.getLogger(__name__)


LIVE_PG_STATES = frozenset({"CREATED", "PENDING", "RESCHEDULING"})


def orphaned_placement_groups(records: list[PlacementGroupRecord]) -> list[PlacementGroupRecord]:
    """The live, non-detached placement groups whose creating actor is dead.

    Groups created by the driver (Tune's trial groups), by live actors, or detached are left out.
    """
    return [
        r
        for r in records
        if r.state in LIVE_PG_STATES
        and r.created_by_actor
        and r.creator_actor_dead
        and not r.is_detached
    ]


def remove_orphaned_placement_groups() -> int:
    """Remove placement groups whose creating actor is dead; returns how many.

    Why: ASHA stops a trial by ending its Tune actor, which takes the Ray Train controller (an
    actor it owns) down with it. The controller created the worker group's placement group, and
    Ray keeps such a group until the *job* ends. Ray Train's own ``PlacementGroupCleaner``
    removes it only when it can query the State API (the dashboard); without it every stopped
    trial keeps its workers' CPUs/GPUs reserved and a long sweep starves.

    Reads the GCS placement-group table through
    :func:`bratslab.compat.ray_tune.placement_group_records` (Ray's public
    ``placement_group_table()`` drops the creator fields); on any API mismatch it logs and does
    nothing.
    """
    import ray  # Ray: placement-group bookkeeping on the driver
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        orphans = orphaned_placement_groups(placement_group_records())
        for r in orphans:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(r.placement_group_id)))
    except Exception as e:  # private API: never let bookkeeping break a sweep
        log.warning("could not check for orphaned placement groups: %s", e)
        return 0
    if orphans:
        log.info("removed %d placement group(s) left by stopped trials", len(orphans))
    return len(orphans)
