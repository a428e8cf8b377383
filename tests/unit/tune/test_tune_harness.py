"""Harness pieces that need no running Ray: the finishing ASHA and the orphan filter."""

from __future__ import annotations

from types import SimpleNamespace

from bratslab.compat.ray_tune import PlacementGroupRecord
from bratslab.tune.config import SweepConfig
from bratslab.tune.placement_groups import orphaned_placement_groups
from bratslab.tune.search import make_scheduler


def test_asha_lets_a_trial_below_the_cutoff_finish_on_the_last_rung():
    from ray.tune.schedulers import TrialScheduler

    # rungs at 1 and 2 epochs; max_t = 2 (the job's epochs)
    cfg = SweepConfig(space="x", scheduler={"grace_period": 1, "reduction_factor": 2})
    asha = make_scheduler(cfg, default_max_t=2)
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for t in (good, bad):
        asha.on_trial_add(None, t)

    def report(trial, epoch, dice):
        return asha.on_trial_result(
            None, trial, {"training_iteration": epoch, "val/dice_mean": dice}
        )

    assert report(good, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(bad, 1, 0.1) == TrialScheduler.STOP  # below the cutoff before max_t: stops
    assert "num_stopped=1" in asha.debug_string()
    assert report(good, 2, 0.9) == TrialScheduler.CONTINUE
    # stock ASHA stops it at the rung on max_t; here it finishes its last epoch and the STOP
    # it would have been is not counted
    assert report(bad, 2, 0.1) == TrialScheduler.CONTINUE
    assert "num_stopped=1" in asha.debug_string()


def test_fifo_scheduler():
    from ray.tune.schedulers import FIFOScheduler

    cfg = SweepConfig(space="x", scheduler={"kind": "fifo"})
    assert type(make_scheduler(cfg, default_max_t=2)) is FIFOScheduler


def test_only_live_groups_of_dead_actors_are_orphans():
    def pg(i, state="CREATED", actor=True, dead=True, detached=False):
        return PlacementGroupRecord(bytes([i]) * 18, state, actor, dead, detached)

    records = [
        pg(1),  # orphan
        pg(2, state="PENDING"),  # orphan
        pg(3, state="RESCHEDULING"),  # orphan
        pg(4, state="REMOVED"),  # already gone
        pg(5, actor=False),  # the driver's (Tune's trial groups)
        pg(6, dead=False),  # a live actor's
        pg(7, detached=True),  # outlives its creator on purpose
    ]
    assert [r.placement_group_id[0] for r in orphaned_placement_groups(records)] == [1, 2, 3]
