"""The per-worker training loop that Ray Train runs on every DDP rank.

Reads top to bottom: set up → (restore) → for each epoch: stream this worker's cases, train on
sampled patches, validate every k epochs, report metrics + a checkpoint. Lines that talk to Ray
are marked ``# Ray``. Workers never touch MLflow: the driver's callback logs what they report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bratslab.data.loader import PatchSampler, epoch_batches, prefetch
from bratslab.jobs.spec import job_from_dict
from bratslab.train.checkpoint import (
    load_train_state,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bratslab.train.losses import SegmentationLoss
from bratslab.train.optim import OptimizerBundle, build_optimizer
from bratslab.train.validation import VAL_KEYS, validate

log = logging.getLogger(__name__)

NOT_VALIDATED = -1.0  # checkpoint score of epochs without validation (ranked below any Dice)


def _world() -> tuple[int, int]:
    import ray.train  # Ray

    ctx = ray.train.get_context()  # Ray
    return ctx.get_world_rank(), ctx.get_world_size()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _amp_context(amp: bool, device: torch.device, arch: str | None = None):
    if not amp:
        return contextlib.nullcontext()
    from bratslab.models.runtime import autocast

    # fp16 on CUDA; on CPU bf16 only for the architectures where it measured faster
    return autocast(device, arch=arch)


def train_step(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: SegmentationLoss,
    bundle: OptimizerBundle,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    trainable: list[nn.Parameter],
    grad_clip: float | None,
    arch: str | None = None,
) -> float:
    """One optimizer step on a batch ``x`` ``(B, C, X, Y, Z)`` float32, ``y`` ``(B, 1, X, Y, Z)``
    uint8 labels; returns the loss. Autocast (bf16 CPU / fp16 CUDA) covers the forward only;
    the loss is computed in float32 and scaled by the GradScaler (a no-op unless fp16)."""
    from bratslab.models.runtime import prepare_input

    xt = prepare_input(torch.from_numpy(x), device)  # channels-last 3-D on CPU (oneDNN)
    yt = torch.from_numpy(y).to(device, non_blocking=True)
    with _amp_context(amp, device, arch):
        out = model(xt)
    loss = loss_fn(out, yt)
    bundle.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(bundle.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    scaler.step(bundle.optimizer)
    scaler.update()
    if bundle.scheduler is not None:
        bundle.scheduler.step()
    return float(loss.detach())


def init_weights(model: nn.Module, model_cfg, source: dict[str, torch.Tensor]) -> str:
    """Load ``source`` into ``model``: as is when every shape matches, else via UpKern
    (trilinear upsampling of depthwise kernels, k3 → k5). Returns "copy" or "upkern"."""
    target = model.state_dict()
    if set(source) != set(target):
        missing = sorted(set(target) - set(source))[:5]
        extra = sorted(set(source) - set(target))[:5]
        raise ValueError(
            f"model.init_from does not fit model: missing {missing}, unexpected {extra}"
        )
    if all(source[k].shape == target[k].shape for k in target):
        model.load_state_dict(source)
        return "copy"
    from bratslab.models.upkern import upkern_state_dict

    model.load_state_dict(upkern_state_dict(source, model))
    return "upkern"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. ``config`` (built by the driver) holds the
    resolved ``job`` spec, the ``patch_size``, the validation ``val_rows``, the ``model_extra``
    written into model.json, and optionally ``init_weights`` (an object ref to a state dict)."""
    import ray.train  # Ray
    import ray.train.torch  # Ray

    from bratslab.models.zoo import build_model

    spec = job_from_dict(config["job"], "job")
    tr = spec.training
    rank, world = _world()
    torch.set_num_threads(spec.scaling.torch_threads or max(int(spec.scaling.cpus_per_worker), 1))
    device = ray.train.torch.get_device()  # Ray: cuda:<local rank> or cpu
    model_cfg = spec.model.model_config_only()
    patch = list(config["patch_size"])
    total_steps = tr.epochs * tr.steps_per_epoch

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model = build_model(model_cfg)
    start_epoch, global_step, best = 0, 0, NOT_VALIDATED
    checkpoint = ray.train.get_checkpoint()  # Ray: latest checkpoint after a failure/restart
    if checkpoint is None and config.get("init_weights") is not None:
        import ray  # Ray: the driver shipped the source weights through the object store

        how = init_weights(model, model_cfg, ray.get(config["init_weights"]))
        log.info("initialised weights from %s (%s)", spec.model.init_from, how)
    bundle: OptimizerBundle = build_optimizer(
        model,
        model_cfg,
        tr.optimizer,
        tr.schedule,
        total_steps=total_steps,
        steps_per_epoch=tr.steps_per_epoch,
        frozen=tr.freeze,
    )
    from bratslab.models.runtime import needs_grad_scaler, prepare_model

    # Loss scaling only where gradients are fp16 (CUDA autocast); bf16/fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=tr.amp and needs_grad_scaler(device))
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:  # Ray
            model.load_state_dict(load_weights(ckpt_dir))
            state = load_train_state(ckpt_dir)
        bundle.optimizer.load_state_dict(state["optimizer"])
        if bundle.scheduler is not None and state.get("scheduler"):
            bundle.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best = float(state["best_dice"])
        log.info("rank %d resumed at epoch %d (step %d)", rank, start_epoch, global_step)
    resumed_from = start_epoch

    # Memory layout before DDP wraps the model: DDP's gradient buckets follow the parameters'
    # strides at construction, and validation (same layout) must not change them later.
    bare = prepare_model(model, device)
    model = ray.train.torch.prepare_model(bare)  # Ray: move to device, wrap in DDP if world > 1
    trainable = [p for p in bare.parameters() if p.requires_grad]
    loss_fn = SegmentationLoss(
        model_cfg.output, tr.deep_supervision_weights, tr.dice_weight, tr.bce_weight
    )
    sampler = PatchSampler(
        patch, model_cfg.in_channels, spec.data.foreground_oversample, seed=tr.seed + rank
    )
    shard = ray.train.get_dataset_shard("train")  # Ray: this worker's share of the case table
    val_rows = config["val_rows"][rank::world]
    last_val: dict[str, float] = {"val/dice_wt": 0.0, "val/dice_tc": 0.0, "val/dice_et": 0.0}
    last_val["val/dice_mean"] = 0.0
    if checkpoint is not None:  # carry the last measured validation across a restart
        last_val.update(
            {k: v for k, v in state.get("metrics", {}).items() if k.startswith("val/dice")}
        )
        last_val.update(
            {k: v for k, v in state.get("metrics", {}).items() if k.startswith("val/lesion")}
        )

    for epoch in range(start_epoch, tr.epochs):
        if tr.fail_at_epoch == epoch and resumed_from == 0 and rank == world - 1:
            # Ray: wait until the controller has registered the last checkpoint, so the
            # restart deterministically resumes from it (the point of the test).
            ray.train.get_all_reported_checkpoints(timeout_s=120)
            log.warning("fault injection: rank %d exits at epoch %d", rank, epoch)
            os._exit(1)  # an abrupt death, as a killed process or lost node would be
        rows = list(shard.iter_rows())  # Ray: case rows (ids, paths) only, never volumes
        model.train()
        bundle.train_mode()
        # Seeds derive from (seed, epoch, rank): a resumed epoch draws the same patches.
        batches = epoch_batches(
            rows,
            steps=tr.steps_per_epoch,
            batch_size=tr.batch_size,
            sampler=sampler,
            augment=spec.data.augment,
            seed=tr.seed * 1_000_003 + epoch * 1009 + rank,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        wait = 0.0
        loss_sum = 0.0
        stream = prefetch(batches, spec.data.prefetch_batches)
        for _ in range(tr.steps_per_epoch):
            tw = time.perf_counter()
            x_np, y_np = next(stream)
            wait += time.perf_counter() - tw
            loss = train_step(
                model,
                x_np,
                y_np,
                loss_fn,
                bundle,
                scaler,
                device,
                tr.amp,
                trainable,
                tr.grad_clip,
                arch=spec.model.arch,
            )
            global_step += 1
            loss_sum += loss
        stream.close()
        train_s = time.perf_counter() - t0
        train_cpu_s = time.process_time() - c0  # this worker process, all threads
        loss_total, wait_total, n = _all_reduce_sum([loss_sum, wait, tr.steps_per_epoch], device)

        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": loss_total / n,
            "time/train_s": train_s,
            "time/train_cpu_s": train_cpu_s,
            "time/data_wait_frac": wait_total / max(train_s * world, 1e-9),
            "throughput/samples_per_s": tr.steps_per_epoch * tr.batch_size * world / train_s,
            "resumed_from_epoch": resumed_from,
            **bundle.lrs(),
        }
        bundle.eval_mode()  # schedule-free: validate and save the averaged weights
        validated = (epoch + 1) % tr.val_every == 0 or epoch + 1 == tr.epochs
        if validated:
            tv = time.perf_counter()
            *sums, cases = _all_reduce_sum(validate(bare, val_rows, patch, spec, device), device)
            cases = max(cases, 1)
            last_val = {f"val/{k}": v / cases for k, v in zip(VAL_KEYS, sums, strict=True)}
            if not tr.val_lesionwise:
                last_val = {k: v for k, v in last_val.items() if "lesion" not in k}
            last_val["val/dice_mean"] = sum(sums[:3]) / (3 * cases)
            metrics["time/val_s"] = time.perf_counter() - tv
            best = max(best, last_val["val/dice_mean"])
        # val/* always present (Tune schedulers need the metric in every result); val/fresh
        # says whether it was measured this epoch (the MLflow callback logs only fresh ones).
        metrics.update(last_val)
        metrics["val/fresh"] = int(validated)
        metrics["val/best_dice_mean"] = best
        metrics["ckpt_score"] = last_val["val/dice_mean"] if validated else NOT_VALIDATED
        metrics["time/epoch_s"] = time.perf_counter() - t0

        with tempfile.TemporaryDirectory(prefix="bratslab-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                state = {
                    "epoch": epoch + 1,  # completed epochs: the next run starts here
                    "global_step": global_step,
                    "optimizer": bundle.optimizer.state_dict(),
                    "scheduler": bundle.scheduler.state_dict() if bundle.scheduler else None,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "rng": rng_state(),
                    "best_dice": best,
                    "metrics": {k: float(v) for k, v in metrics.items()},
                }
                save_checkpoint(
                    tmp,
                    model=bare,
                    model_cfg=model_cfg,
                    model_extra={**config["model_extra"], "epoch": epoch + 1},
                    train_state=state,
                    job=config["job"],
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)  # Ray
            name = f"epoch{epoch + 1:04d}-{uuid.uuid4().hex[:6]}" if ckpt else None
            # Ray: a barrier across workers; rank 0's metrics are attached to the checkpoint.
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)
        bundle.train_mode()
