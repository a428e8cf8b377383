"""Optional follow-up stage of a sweep: UpKern the best small-kernel MedNeXt and finetune it.

UpKern (Roy et al. 2023): a large-kernel MedNeXt is initialised from a trained small-kernel one
by trilinearly upsampling every depthwise kernel (k3 → k5); all other weights are copied. The
trainer does the conversion when ``model.init_from`` has a different kernel size.
"""

from __future__ import annotations

import logging

from bratslab.config import apply_overrides
from bratslab.train.trainer import run_training
from bratslab.tune.config import SweepConfig
from bratslab.tune.selection import rank_candidates
from bratslab.tune.trial import TrialContext
from bratslab.tune.trial_result import TrialResult

log = logging.getLogger(__name__)


def upkern_job(ctx: TrialContext, cfg: SweepConfig, rows: list[TrialResult]):
    """The UpKern follow-up job, or None when no trial qualifies.

    The source is the best trial (by ``best_metric``) that trained a MedNeXt with kernel
    ``upkern.from_kernel``; the follow-up is that trial's job with kernel ``upkern.to_kernel``,
    initialised from its best checkpoint (the trainer UpKerns mismatched depthwise kernels:
    trilinear upsampling, every other weight copied), plus ``upkern.overrides``.
    """
    uk = cfg.upkern
    eligible = []
    for r in selection_rank(rows, cfg.mode):
        job = ctx.space.apply(ctx.base_job, ctx.space.decode(r.params))
        if job["model"]["arch"] == "mednext" and job["model"]["mednext"]["kernel_size"] == (
            uk.from_kernel
        ):
            eligible.append((r, job))
    if not eligible:
        return None, None
    source, data = eligible[0]
    data.pop("sweep", None)
    data["model"]["mednext"]["kernel_size"] = uk.to_kernel
    # A checkpoint in a bucket is copied into the sweep folder first (init_from is local).
    data["model"]["init_from"] = ctx.paths.experiment.localize(
        source.best_checkpoint, source.trial_id
    )
    apply_overrides(data, uk.overrides)
    data["name"] = f"{ctx.sweep_name}-upkern-k{uk.to_kernel}"
    tracking = data.setdefault("tracking", {})
    tracking["parent_run_id"] = ctx.parent_run_id
    tracking["log_model"] = False
    tracking["tags"] = {
        **(tracking.get("tags") or {}),
        "bratslab.sweep": ctx.sweep_name,
        "bratslab.trial_id": f"upkern-k{uk.to_kernel}",
        "bratslab.upkern_from_trial": source.trial_id,
    }
    return source, ctx.make_job(data, f"sweep {ctx.sweep_name} upkern follow-up")


def selection_rank(rows: list[TrialResult], mode: str) -> list[TrialResult]:
    return rank_candidates(rows, mode, len(rows))


def run_upkern(ctx: TrialContext, cfg: SweepConfig, outcome) -> None:
    """Finetune the UpKerned best small-kernel MedNeXt as one more (non-Tune) trial; its row is
    appended to ``outcome.trials`` (a :class:`bratslab.tune.sweep_run.SweepOutcome`)."""
    source, job = upkern_job(ctx, cfg, outcome.trials)
    if job is None:
        log.warning("upkern: no MedNeXt trial with kernel %d finished", cfg.upkern.from_kernel)
        return
    log.info("upkern: k%d → k%d from trial %s", cfg.upkern.from_kernel, cfg.upkern.to_kernel,
             source.trial_id)  # fmt: skip
    done = run_training(job, name=job.name, storage_path=ctx.paths.experiment.train_storage)
    best = done.best_metrics.get(cfg.metric)
    outcome.trials.append(
        TrialResult(
            trial_id=f"upkern-k{cfg.upkern.to_kernel}",
            status="TERMINATED",
            completed=True,
            iterations=int(done.metrics.get("epoch", 0)) + 1,
            best_metric=float(best) if best is not None else None,
            best_checkpoint=str(done.best_checkpoint) if done.best_checkpoint else None,
            params={
                **source.params,
                "model.mednext.kernel_size": cfg.upkern.to_kernel,
                "upkern_from_trial": source.trial_id,
            },
            mlflow_run_id=done.run_id,
        )
    )
