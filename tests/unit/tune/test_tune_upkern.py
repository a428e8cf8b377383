"""The UpKern follow-up job: the best k3 MedNeXt trial, re-kernelled to k5, initialised from it."""

from __future__ import annotations

from pathlib import Path

from bratslab.config import load_yaml
from bratslab.jobs.spec import job_from_dict
from bratslab.tune.config import SweepConfig
from bratslab.tune.followup import upkern_job
from bratslab.tune.space import load_space
from bratslab.tune.sweep_paths import SweepPaths
from bratslab.tune.trial import TrialContext
from bratslab.tune.trial_result import TrialResult

ROOT = Path(__file__).resolve().parents[3]


def _ctx(tmp_path):
    base = load_yaml(ROOT / "jobs/sweep_mednext.yaml")
    return TrialContext(
        sweep_name="sw",
        paths=SweepPaths(tmp_path),
        base_job=base,
        space=load_space(ROOT / "search_spaces/mednext.yaml"),
        parent_run_id="parent123",
        make_job=job_from_dict,
    )


def _row(tid, kernel, best, ckpt=True):
    return TrialResult(
        trial_id=tid,
        best_metric=best,
        best_checkpoint=f"/ckpt/{tid}" if ckpt else None,
        params={"model.mednext.kernel_size": kernel, "training.optimizer.lr": 1e-3},
    )


def test_upkern_job_starts_from_best_small_kernel_trial(tmp_path):
    cfg = SweepConfig(space="x", upkern={"enabled": True, "overrides": ["training.epochs=7"]})
    rows = [
        _row("a", 5, 0.9),
        _row("b", 3, 0.8),
        _row("c", 3, 0.85, ckpt=False),  # no checkpoint: not a source
        _row("d", 3, 0.7),
    ]
    source, job = upkern_job(_ctx(tmp_path), cfg, rows)
    assert source.trial_id == "b"
    assert job.model.arch == "mednext" and job.model.mednext.kernel_size == 5
    assert job.model.init_from == "/ckpt/b"
    assert job.training.epochs == 7
    assert job.training.optimizer.lr == 1e-3
    assert job.tracking.parent_run_id == "parent123" and job.sweep is None
    assert job.tracking.tags["bratslab.upkern_from_trial"] == "b"
    assert job.name == "sw-upkern-k5"


def test_upkern_job_none_without_small_kernel_trial(tmp_path):
    cfg = SweepConfig(space="x", upkern={"enabled": True})
    assert upkern_job(_ctx(tmp_path), cfg, [_row("a", 5, 0.9)]) == (None, None)
