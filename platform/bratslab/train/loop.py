"""The per-worker training loop that Ray Train runs on every DDP rank.

:func:`train_loop_per_worker` reads top to bottom: set up → (restore) → for each epoch: take
this epoch's patch batches (``data.loader``: sampled by a thread from this worker's cases, or
the next batches of the Ray Data patch stream), train on them, validate every k epochs, report
metrics + a checkpoint (one ``ray.train.report`` per epoch, none per step). The helpers beside
it do one of those steps each; the optimizer step is :mod:`bratslab.train.step`, what carries
over between epochs and restarts :mod:`bratslab.train.loop_state`. Lines that talk to Ray are
marked ``# Ray``. Workers never touch MLflow: the driver's callback logs what they report.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from bratslab.config import validate as validate_config
from bratslab.data.augment_batched import BatchAugment
from bratslab.data.device_sampling import (
    augmented,
    margin_sampler,
    sampled_batches,
    sampler_ring,
    take_seeded,
)
from bratslab.data.loader import PatchSampler, epoch_batches, prefetch
from bratslab.data.region_set import RegionSet, region_set
from bratslab.data.remote import is_remote, local_store_once, localize_rows
from bratslab.models.config import ModelConfig
from bratslab.models.runtime import needs_grad_scaler, prepare_model
from bratslab.models.zoo import build_model
from bratslab.train.checkpoint import resuming_from, save_checkpoint
from bratslab.train.init_from import init_weights
from bratslab.train.logged_metrics import NODE_IP_KEY
from bratslab.train.loop_state import NOT_VALIDATED, LoopState, checkpoint_state, restore
from bratslab.train.losses import SegmentationLoss
from bratslab.train.optim import OptimizerBundle, build_optimizer
from bratslab.train.step import StepContext, train_step
from bratslab.train.validation import validate, validation_means

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One rank's fixed setup: the step context, the bare module (validation, checkpoints)
    and this rank's sampler and validation cases; with ``data.loader: ray``, ``patches`` is
    this attempt's patch stream (opened at the first epoch, read across epochs)."""

    spec: JobSpec
    rank: int
    world: int
    step: StepContext
    bare: nn.Module
    model_cfg: ModelConfig
    patch: list[int]
    sampler: PatchSampler
    val_rows: list[dict[str, Any]]
    patches: Iterator[dict[str, torch.Tensor]] | None = None
    augmenter: Any = None  # data.augment.on: device — the BatchAugment this rank applies
    # the store profile's regions: the outputs and what validation scores (default WT/TC/ET)
    regions: RegionSet = field(default_factory=region_set)


def train_loop_per_worker(
    config: dict[str, Any], *, on_epoch_start: Callable[[int], None] | None = None
) -> None:
    """Entry point of every Ray Train worker. ``config`` (built by the driver) holds the
    resolved ``job`` spec and ``job_type``, the class it validates into (the driver's spec
    class, injected: train/ never imports the jobs layer), the ``patch_size``, the validation
    ``val_rows``, the ``model_extra`` written into model.json, optionally ``init_weights`` (an
    object ref to a state dict), and for ``data.loader: thread`` the case table ``train_rows``
    (absent: this worker's Ray Data shard of it). ``on_epoch_start(epoch)``, if given, runs
    before each epoch (e.g. a test's fault)."""
    import ray.train  # Ray
    import ray.train.torch  # Ray

    spec: JobSpec = validate_config(config["job_type"], config["job"], "job")
    tr, model_cfg = spec.training, spec.model.model_config_only()
    torch.set_num_threads(spec.scaling.torch_threads or max(int(spec.scaling.cpus_per_worker), 1))
    device = ray.train.torch.get_device()  # Ray: cuda:<local rank> or cpu
    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model = build_model(model_cfg)
    checkpoint = ray.train.get_checkpoint()  # Ray: latest checkpoint after a failure/restart
    if checkpoint is None and config.get("init_weights") is not None:
        _init_from(model, spec, config["init_weights"])  # Ray: an object-store reference
    bundle = _optimizer(model, spec)
    # Loss scaling only where gradients are fp16 (CUDA autocast); bf16/fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=tr.amp and needs_grad_scaler(device))
    loop_state = LoopState()
    if checkpoint is not None:
        # A checkpoint that cannot load fails every restart alike: CheckpointUnusable ends the
        # run at once (bratslab.train.failures).
        with checkpoint.as_directory() as ckpt_dir, resuming_from(checkpoint.path):  # Ray
            loop_state = restore(ckpt_dir, model, bundle, scaler)
    w = _worker(spec, config, model, bundle, scaler, device)  # Ray: rank, world, DDP wrap
    if checkpoint is not None:
        log.info(
            # Epochs counted from 1, as the console's epoch lines count them.
            "rank %d resumes with epoch %d (step %d)",
            w.rank,
            loop_state.epoch + 1,
            loop_state.global_step,
        )
    shard = train_shard(config, w.rank, w.world)  # Ray for a dataset shard: see there

    for epoch in range(loop_state.epoch, tr.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        t0 = time.perf_counter()
        metrics = train_epoch(w, epoch_batches_of(w, shard, epoch), epoch, loop_state)
        metrics.update(validate_epoch(w, epoch, loop_state))
        metrics["time/epoch_s"] = time.perf_counter() - t0
        report_epoch(w, epoch, loop_state, metrics, config)
        bundle.train_mode()


def train_shard(config: dict[str, Any], rank: int, world: int):
    """Rank ``rank``'s share of the training data: its rows of the case table in the loop
    config (``rows[rank::world]``, a list), else its Ray Data shard (``data.loader: ray``'s
    patch stream, or a case table sent as a dataset)."""
    import ray.train  # Ray

    if config.get("train_rows") is not None:
        return list(config["train_rows"])[rank::world]
    return ray.train.get_dataset_shard("train")  # Ray


def _world() -> tuple[int, int]:
    import ray.train  # Ray

    ctx = ray.train.get_context()  # Ray
    return ctx.get_world_rank(), ctx.get_world_size()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _init_from(model: nn.Module, spec: JobSpec, ref) -> None:
    import ray  # Ray: the driver shipped the source weights through the object store

    how = init_weights(model, spec.model.model_config_only(), ray.get(ref))  # Ray
    log.info("initialised weights from %s (%s)", spec.model.init_from, how)


def _optimizer(model: nn.Module, spec: JobSpec) -> OptimizerBundle:
    tr = spec.training
    return build_optimizer(
        model,
        spec.model.model_config_only(),
        tr.optimizer,
        tr.schedule,
        total_steps=tr.epochs * tr.steps_per_epoch,
        steps_per_epoch=tr.steps_per_epoch,
        frozen=tr.freeze,
    )


def _worker(
    spec: JobSpec,
    config: dict[str, Any],
    model: nn.Module,
    bundle: OptimizerBundle,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> Worker:
    """Lay the model out for ``device``, wrap it for DDP and collect this rank's setup."""
    import ray.train.torch  # Ray

    tr, model_cfg = spec.training, spec.model.model_config_only()
    rank, world = _world()  # Ray
    # Memory layout before DDP wraps the model: DDP's gradient buckets follow the parameters'
    # strides at construction, and validation (same layout) must not change them later.
    bare = prepare_model(model, device)
    wrapped = ray.train.torch.prepare_model(bare)  # Ray: move to device, DDP if world > 1
    regions = region_set(config["model_extra"].get("profile"))
    loss_fn = SegmentationLoss(
        model_cfg.output,
        tr.deep_supervision_weights,
        tr.dice_weight,
        tr.bce_weight,
        members=regions.members,
    )
    step = StepContext(
        model=wrapped,
        bundle=bundle,
        loss_fn=loss_fn,
        scaler=scaler,
        device=device,
        amp=tr.amp,
        arch=spec.model.arch,  # the CPU bf16 choice is per architecture
        grad_clip=tr.grad_clip,
    )
    patch = list(config["patch_size"])
    # data.augment.on: device — the sampler cuts a margin, the worker augments
    aug_cfg = spec.data.augment
    sampler = margin_sampler(
        aug_cfg, patch, model_cfg.in_channels, spec.data.foreground_oversample, tr.seed + rank
    )
    if is_remote(spec.data.store):  # synced to this node's disk before a case file is opened
        local_store_once(spec.data.store)
    val_rows = localize_rows(config["val_rows"][rank::world])
    w = Worker(spec, rank, world, step, bare, model_cfg, patch, sampler, val_rows, regions=regions)
    if aug_cfg.on == "device" and aug_cfg.enabled:
        w.augmenter = BatchAugment(aug_cfg, patch)
    return w


def epoch_batches_of(w: Worker, shard, epoch: int) -> Iterator[tuple[Any, Any]]:
    """This epoch's ``steps_per_epoch`` batches ``(x, y)`` from ``shard``, this worker's
    share of the training data (:func:`train_shard`: a list of case rows, or its
    ``get_dataset_shard("train")``).

    ``data.loader: thread``: a fresh pass over the worker's case rows (ids and paths, never
    volumes; ``s3://`` paths → this node's copy), sampled and augmented by a prefetch thread,
    seeded by (seed, epoch, rank), so a resumed epoch draws the same patches. ``ray``: the
    next batches of the attempt's patch stream (:mod:`bratslab.data.patch_pipeline`), torch
    tensors already on the worker's device, fetched ``prefetch_batches`` ahead by Ray Data.
    With ``data.augment.on: device`` either loader only samples (patches with a margin, and a
    seed each) and :func:`_on_device` augments the batch on the worker's device.
    """
    tr, data = w.spec.training, w.spec.data
    if data.loader == "ray":
        if w.patches is None:
            w.patches = iter(
                shard.iter_torch_batches(  # Ray: one pass for the whole attempt
                    batch_size=tr.batch_size,
                    prefetch_batches=data.prefetch_batches,
                    device=w.step.device,
                    drop_last=True,
                    pin_memory=w.step.device.type == "cuda",
                )
            )
        if w.augmenter is not None:  # data.augment.on: device: augment here, on the device
            return _on_device(w, take_seeded(w.patches, tr.steps_per_epoch))
        return _take(w.patches, tr.steps_per_epoch)
    # Ray (a dataset shard only): a split of the case rows on every epoch
    rows = localize_rows(shard if isinstance(shard, list) else shard.iter_rows())
    if w.augmenter is not None:  # data.augment.on: device: the thread only samples
        seed = tr.seed * 1_000_003 + epoch * 1009 + w.rank
        kw = {"steps": tr.steps_per_epoch, "batch_size": tr.batch_size, "sampler": w.sampler}
        # arrays reused: more slots than batches queued + being filled + being augmented
        kw["ring"] = sampler_ring(w.sampler, data.prefetch_batches + 3)
        sampled = sampled_batches(rows, **kw, seed=seed, augment=data.augment)
        if w.step.device.type == "cpu":  # the CPU augments in the thread, beside the step
            return prefetch(_on_device(w, sampled), data.prefetch_batches)
        return _on_device(w, prefetch(sampled, data.prefetch_batches))
    batches = epoch_batches(
        rows,
        steps=tr.steps_per_epoch,
        batch_size=tr.batch_size,
        sampler=w.sampler,
        augment=data.augment,
        seed=tr.seed * 1_000_003 + epoch * 1009 + w.rank,
    )
    return prefetch(batches, data.prefetch_batches)


def _on_device(w: Worker, stream: Iterator[tuple[Any, Any, Any]]) -> Iterator[tuple[Any, Any]]:
    """``data.augment.on: device``: ``(x, y, seeds)`` batches of sampled patches →
    ``(x, y)`` tensors augmented on the worker's device by ``w.augmenter``."""
    return augmented(stream, w.augmenter, w.step.device)


def _take(stream: Iterator[dict[str, torch.Tensor]], steps: int) -> Iterator[tuple[Any, Any]]:
    """``steps`` batches ``(image, label)`` of the Ray Data patch stream."""
    for _ in range(steps):
        batch = next(stream, None)
        if batch is None:
            raise RuntimeError(
                "the Ray Data patch stream ended before the last epoch (it holds epochs * "
                "steps_per_epoch batches per worker)"
            )
        yield batch["image"], batch["label"]


def train_epoch(
    w: Worker, stream: Iterator[tuple[Any, Any]], epoch: int, loop_state: LoopState
) -> dict[str, Any]:
    """``steps_per_epoch`` steps on batches from ``stream`` (:func:`epoch_batches_of`); the
    loss and timings (loss and data wait summed over ranks) and the learning rates, as report
    metrics. ``time/data_wait_frac``: the fraction of the epoch's training wall time (the
    steps, not validation) spent waiting for the next batch, over all ranks (0: the loader
    kept up, 1: nothing but waiting)."""
    tr = w.spec.training
    w.step.model.train()
    w.step.bundle.train_mode()
    t0, c0 = time.perf_counter(), time.process_time()
    wait = loss_sum = 0.0
    for _ in range(tr.steps_per_epoch):
        tw = time.perf_counter()
        x, y = next(stream)
        wait += time.perf_counter() - tw
        loss_sum += train_step(w.step, x, y)
        loop_state.global_step += 1
    stream.close()
    train_s = time.perf_counter() - t0
    train_cpu_s = time.process_time() - c0  # this worker process, all threads
    loss_total, wait_total, n, train_total = _all_reduce_sum(
        [loss_sum, wait, tr.steps_per_epoch, train_s], w.step.device
    )
    return {
        "epoch": epoch,
        "train/loss": loss_total / n,
        "time/train_s": train_s,
        "time/train_cpu_s": train_cpu_s,
        # each rank's wait lies inside its own train_s, so the ratio of the sums is in [0, 1]
        "time/data_wait_frac": wait_total / max(train_total, 1e-9),
        "throughput/samples_per_s": tr.steps_per_epoch * tr.batch_size * w.world / train_s,
        "resumed_from_epoch": loop_state.resumed_from,
        **w.step.bundle.lrs(),
    }


def validate_epoch(w: Worker, epoch: int, loop_state: LoopState) -> dict[str, Any]:
    """Validation metrics for this epoch's report. Measured every ``val_every`` epochs and at
    the last; otherwise the last measured values are repeated, because Tune schedulers need the
    metric in every result, and ``val/fresh`` says which (the MLflow callback logs fresh ones)."""
    tr = w.spec.training
    w.step.bundle.eval_mode()  # schedule-free: validate and save the averaged weights
    validated = (epoch + 1) % tr.val_every == 0 or epoch + 1 == tr.epochs
    metrics: dict[str, Any] = {}
    if validated:
        tv = time.perf_counter()
        device = w.step.device
        *sums, cases = _all_reduce_sum(
            validate(w.bare, w.val_rows, w.patch, w.spec, device, w.regions), device
        )
        last_val = validation_means(sums, max(cases, 1), w.regions, bool(tr.val_lesionwise))
        loop_state.last_val = last_val
        loop_state.best = max(loop_state.best, last_val[tr.selection_metric])
        metrics["time/val_s"] = time.perf_counter() - tv
    metrics.update(loop_state.last_val)
    metrics["val/fresh"] = int(validated)
    # The checkpoint score is the selection metric (voxel or lesion-wise Dice; both are logged).
    metrics["val/best_" + tr.selection_metric.removeprefix("val/")] = loop_state.best
    metrics["ckpt_score"] = loop_state.last_val[tr.selection_metric] if validated else NOT_VALIDATED
    return metrics


def report_epoch(
    w: Worker, epoch: int, loop_state: LoopState, metrics: dict[str, Any], config: dict[str, Any]
) -> None:
    """Report ``metrics`` to Ray Train with rank 0's checkpoint of the state after ``epoch``."""
    import ray.train  # Ray
    import ray.util  # Ray

    with tempfile.TemporaryDirectory(prefix="bratslab-ckpt-") as tmp:
        ckpt = None
        if w.rank == 0:
            state = checkpoint_state(w.step.bundle, w.step.scaler, epoch, loop_state, metrics)
            save_checkpoint(
                tmp,
                model=w.bare,
                model_cfg=w.model_cfg,
                model_extra={**config["model_extra"], "epoch": epoch + 1},
                train_state=state,
                job=config["job"],
            )
            ckpt = ray.train.Checkpoint.from_directory(tmp)  # Ray
        name = f"epoch{epoch + 1:04d}-{uuid.uuid4().hex[:6]}" if ckpt else None
        # Every rank says where it runs: the driver tags the MLflow run with the spread.
        metrics = {**metrics, NODE_IP_KEY: ray.util.get_node_ip_address()}  # Ray
        # Ray: a barrier across workers; rank 0's metrics are attached to the checkpoint.
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)  # Ray
