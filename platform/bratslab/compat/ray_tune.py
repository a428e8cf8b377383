"""Ray Tune / Ray core internals used by :mod:`bratslab.tune`, each behind one small function.

Every access below was checked against ``ray`` **2.60.0** (``RAY_CHECKED``); the comment of each
function names the internal it touches and the public API that would replace it.
``tests/unit/compat/test_ray_tune.py`` fails as soon as one of these shapes changes, without
starting Ray. ``ray`` is imported inside the functions (this module is imported by the driver
only when a sweep runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RAY_CHECKED = "2.60.0"  # the ray version every access below was checked against

# Key that ``ray.tune.integration.ray_train.TuneReportCallback`` (a DeveloperAPI) adds to each
# result forwarded from a Train run: the reported checkpoint's path. Checked: ray 2.60.0 (the
# module constant ``ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY``). Public replacement:
# none; the callback forwards the path as a metric, not as a Tune checkpoint, so Tune's
# ``Result.best_checkpoints`` stays empty.
TUNE_REPORT_CHECKPOINT_KEY = "checkpoint_path"


@dataclass(frozen=True)
class PlacementGroupRecord:
    """One entry of the GCS placement-group table, with the creator fields Ray's public
    ``ray.util.placement_group_table()`` leaves out.

    Attributes:
        placement_group_id: the group's binary id (``ray.PlacementGroupID(...)`` accepts it).
        state: ``PENDING``, ``PREPARED``, ``CREATED``, ``REMOVED`` or ``RESCHEDULING``.
        created_by_actor: an actor (not a driver) created the group.
        creator_actor_dead: that actor has died.
        is_detached: the group outlives its creator by design.
    """

    placement_group_id: bytes
    state: str
    created_by_actor: bool
    creator_actor_dead: bool
    is_detached: bool


def decode_placement_group(raw: bytes) -> PlacementGroupRecord:
    """One serialized ``gcs_pb2.PlacementGroupTableData`` as a :class:`PlacementGroupRecord`.

    Checked: ray 2.60.0 (``ray.core.generated.gcs_pb2.PlacementGroupTableData``, fields
    ``placement_group_id``, ``state``, ``creator_actor_id``, ``creator_actor_dead``,
    ``is_detached``). Public replacement: none; see :func:`placement_group_records`.
    """
    from ray.core.generated import gcs_pb2  # Ray: generated GCS protobufs (not a public API)

    table_data = gcs_pb2.PlacementGroupTableData
    d = table_data.FromString(raw)
    # A group created by a driver has a nil creator actor id (empty, or all 0xFF bytes).
    nil_actor = not d.creator_actor_id or set(d.creator_actor_id) == {0xFF}
    return PlacementGroupRecord(
        placement_group_id=bytes(d.placement_group_id),
        state=table_data.PlacementGroupState.Name(d.state),
        created_by_actor=not nil_actor,
        creator_actor_dead=bool(d.creator_actor_dead),
        is_detached=bool(d.is_detached),
    )


def placement_group_records() -> list[PlacementGroupRecord]:
    """Every placement group the GCS knows, with its creator fields (needs ``ray.init``).

    Checked: ray 2.60.0 (``ray._private.state.state._connect_and_get_accessor()
    .get_placement_group_table()``, a list of serialized ``PlacementGroupTableData``).
    Public replacement: none that carries the creator actor. ``ray.util.placement_group_table()``
    drops the creator fields; ``ray.util.state.list_placement_groups()`` needs the dashboard and
    reports the creator job only. Ray Train's ``PlacementGroupCleaner`` would make the whole
    check unnecessary where the State API is available.

    Raises:
        Exception: whatever Ray raises when the accessor is missing or Ray is not initialised.
    """
    from ray._private.state import state  # Ray: private GlobalState singleton

    table = state._connect_and_get_accessor().get_placement_group_table()
    return [decode_placement_group(raw) for raw in table]


def tune_auto_result_keys() -> frozenset[str]:
    """Result keys Tune fills in itself (iteration, timings, host, ...).

    Checked: ray 2.60.0 (``ray.tune.result.AUTO_RESULT_KEYS``, an undocumented module constant).
    Public replacement: none; the keys are listed in Tune's "Auto-filled metrics" docs.
    """
    from ray.tune.result import AUTO_RESULT_KEYS  # Ray: undocumented constant

    return frozenset(AUTO_RESULT_KEYS)


# ASHA (``ray.tune.schedulers.AsyncHyperBandScheduler``, alias ``ASHAScheduler``) keeps its
# constructor arguments in private attributes. A subclass that overrides ``on_trial_result``
# reads them through these functions.


def asha_time_attr(scheduler: Any) -> str:
    """The result key ASHA measures progress with (its ``time_attr`` argument).

    Checked: ray 2.60.0 (``AsyncHyperBandScheduler._time_attr``, a str). Public replacement:
    none; a subclass could keep its own copy of the constructor argument instead.
    """
    return scheduler._time_attr


def asha_max_t(scheduler: Any) -> float:
    """ASHA's ``max_t`` (progress units of the last rung).

    Checked: ray 2.60.0 (``AsyncHyperBandScheduler._max_t``, the int/float given). Public
    replacement: none; a subclass could keep its own copy of the constructor argument instead.
    """
    return scheduler._max_t


def asha_uncount_stop(scheduler: Any) -> None:
    """Take back one STOP from ASHA's count (after overriding its decision with CONTINUE).

    Checked: ray 2.60.0 (``AsyncHyperBandScheduler._num_stopped``, an int incremented by
    ``on_trial_result`` for every STOP it returns; it only feeds ``debug_string()``). Public
    replacement: none; ``stop_last_trials=False`` covers ``max_t`` itself but not a rung that
    falls on ``max_t``.
    """
    scheduler._num_stopped -= 1
