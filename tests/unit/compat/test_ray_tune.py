"""The Ray internals behind `bratslab.compat.ray_tune` still have the shape it was written for.

None of these tests starts Ray. A failure here means the installed ray differs from
`RAY_CHECKED` in a way `bratslab.compat.ray_tune` must follow (see each function's comment).
"""

from __future__ import annotations

from types import SimpleNamespace

from bratslab.compat import ray_tune as compat


def _asha(**kw):
    from ray.tune.schedulers import ASHAScheduler

    args = {"time_attr": "epoch", "metric": "m", "mode": "max", "max_t": 8, "grace_period": 1}
    return ASHAScheduler(**{**args, **kw})


def test_asha_private_attributes_hold_the_constructor_arguments():
    asha = _asha()
    # plain instance attributes (not properties), with the expected types
    assert {"_time_attr", "_max_t", "_num_stopped"} <= set(vars(asha))
    assert compat.asha_time_attr(asha) == "epoch"
    assert compat.asha_max_t(asha) == 8 and isinstance(compat.asha_max_t(asha), int)
    assert type(asha._num_stopped) is int and asha._num_stopped == 0
    assert compat.asha_max_t(_asha(max_t=2.5)) == 2.5


def test_asha_counts_each_stop_in_num_stopped():
    from ray.tune.schedulers import TrialScheduler

    asha = _asha(max_t=2, reduction_factor=2)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for t in (a, b):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, a, {"epoch": 1, "m": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"epoch": 1, "m": 0.1}) == TrialScheduler.STOP
    assert asha._num_stopped == 1 and "num_stopped=1" in asha.debug_string()
    compat.asha_uncount_stop(asha)
    assert asha._num_stopped == 0 and "num_stopped=0" in asha.debug_string()


def test_placement_group_state_accessor_exists():
    from ray._private.state import GlobalState, state

    assert isinstance(state, GlobalState)
    assert callable(getattr(state, "_connect_and_get_accessor", None))
    from ray._raylet import GlobalStateAccessor

    assert callable(getattr(GlobalStateAccessor, "get_placement_group_table", None))


def test_placement_group_accessor_refuses_without_ray():
    """In a fresh process: an earlier test in this one may have started Ray."""
    import subprocess
    import sys

    code = (
        "import ray\n"
        "from bratslab.compat import ray_tune as compat\n"
        "try:\n"
        "    compat.placement_group_records()\n"
        "except ray.exceptions.RaySystemError as e:\n"
        "    assert 'ray.init' in str(e), e\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr[-2000:]


def test_placement_group_table_data_decodes():
    from ray.core.generated import gcs_pb2

    table_data = gcs_pb2.PlacementGroupTableData
    assert {"PENDING", "CREATED", "REMOVED", "RESCHEDULING"} <= set(
        table_data.PlacementGroupState.keys()
    )
    by_actor = table_data(
        placement_group_id=b"\x01" * 18,
        state=table_data.CREATED,
        creator_actor_id=b"\x02" * 16,
        creator_actor_dead=True,
    )
    rec = compat.decode_placement_group(by_actor.SerializeToString())
    assert rec == compat.PlacementGroupRecord(b"\x01" * 18, "CREATED", True, True, False)
    by_driver = table_data(
        placement_group_id=b"\x03" * 18,
        state=table_data.PENDING,
        creator_actor_id=b"\xff" * 16,  # nil actor id: a driver created the group
        is_detached=True,
    )
    rec = compat.decode_placement_group(by_driver.SerializeToString())
    assert rec == compat.PlacementGroupRecord(b"\x03" * 18, "PENDING", False, False, True)
    empty = compat.decode_placement_group(table_data(state=table_data.REMOVED).SerializeToString())
    assert empty.state == "REMOVED" and not empty.created_by_actor
    import ray

    assert ray.PlacementGroupID(rec.placement_group_id).hex() == "03" * 18


def test_tune_report_checkpoint_key_and_auto_result_keys():
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    assert compat.TUNE_REPORT_CHECKPOINT_KEY == CHECKPOINT_PATH_KEY
    keys = compat.tune_auto_result_keys()
    assert {"training_iteration", "time_total_s", "timestamp", "pid"} <= keys
    assert "val/dice_mean" not in keys


def test_checked_version_is_the_installed_one():
    import ray

    assert ray.__version__ == compat.RAY_CHECKED, (
        f"ray {ray.__version__} is installed; bratslab.compat.ray_tune was checked against "
        f"{compat.RAY_CHECKED}: re-check every access there, then update RAY_CHECKED"
    )
