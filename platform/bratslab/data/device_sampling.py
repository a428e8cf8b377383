"""The loader's side of ``data.augment.on: device``: sample only, augment on the worker.

The loader (thread or Ray Data actors) cuts each patch ``margin`` voxels larger on each side
(:func:`~bratslab.data.augment_draw.affine_margin`; 0 when the recipe neither rotates nor
scales) around the very patch ``on: loader`` would cut, and hands it on with one augmentation
seed per patch; the training worker applies :class:`~bratslab.data.augment_batched.BatchAugment`
to the whole batch on its device, whose resampling crops back to the patch size. Seeds: the
Ray Data stream carries each draw's seed from ``(training.seed, epoch, draw)`` (the one the
MONAI path uses); the thread loader derives them from ``(seed, epoch, rank, step)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.augment_draw import affine_margin, draw_sample, needed_margin
from bratslab.data.loader import PatchSampler
from bratslab.data.patch_pipeline import _AUGMENT, _SAMPLE, CASE_KEYS, PatchMaker, draw_rng
from bratslab.data.remote import localize_rows

MODALITY_CHANNELS = 4


class MarginSampler(PatchSampler):
    """:class:`PatchSampler` whose patches ``(C, X+2m, Y+2m, Z+2m)`` carry a ``margin`` ``m``
    per axis around the patch the base class would cut (the same random draws, so its centre
    crop is that patch exactly); voxels outside the volume are 0. :meth:`sample_into` reads
    only as much of the margin as one draw's resampling needs and leaves the rest 0."""

    def __init__(self, patch_size, in_channels, fg_fraction, seed, margin: Sequence[int]):
        super().__init__(patch_size, in_channels, fg_fraction, seed)
        self.margin = np.asarray(margin, dtype=int)
        self.shape = tuple(int(v) for v in self.patch + 2 * self.margin)

    def sample(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        xp = np.zeros((self.in_channels, *self.shape), np.float32)
        yp = np.zeros((1, *self.shape), np.uint8)
        self.sample_into(row, xp, yp, self.margin)
        return xp, yp

    def sample_into(self, row: dict[str, Any], xp: np.ndarray, yp: np.ndarray, read) -> tuple:
        """Draw one patch (the base class's draws) into zeroed ``xp`` ``(C, *shape)`` and
        ``yp`` ``(1, *shape)``, reading ``read`` (<= ``margin``) voxels around the patch;
        returns the box written (spatial slices)."""
        x, y, start = self.draw_start(row)
        shape = np.asarray(x.shape[1:])
        read = np.asarray(read, dtype=int)
        lo, hi = start - read, start + self.patch + read
        inside = zip(np.maximum(lo, 0), np.minimum(hi, shape), strict=True)
        src = tuple(slice(int(a), int(b)) for a, b in inside)
        base = lo - (start - self.margin)  # where the read box sits in the output
        dst = tuple(
            slice(int(s.start - a + o), int(s.stop - a + o))
            for s, a, o in zip(src, lo, base, strict=True)
        )
        xp[(slice(None), *dst)] = x[(slice(0, self.in_channels), *src)]
        yp[(slice(None), *dst)] = y[(slice(0, 1), *src)]
        return dst


def margin_sampler(
    augment: AugmentConfig, patch_size, in_channels: int, fg_fraction: float, seed: int
) -> PatchSampler:
    """The loader's sampler for ``augment``: the plain one for ``on: loader`` or without
    augmentation, else one with the affine margin."""
    if augment.on == "loader" or not augment.enabled:
        return PatchSampler(patch_size, in_channels, fg_fraction, seed)
    margin = affine_margin(augment, patch_size)
    return MarginSampler(patch_size, in_channels, fg_fraction, seed, margin)


class BatchRing:
    """``size`` batch arrays handed out in turn and reused: fresh arrays of the margin shape
    would cost page faults and kernel zeroing of hundreds of MB per batch at 128³ (numpy asks
    for 2 MiB huge pages, so even the untouched margin gets zeroed). A reused slot has only
    the boxes its last batch wrote set back to 0. A slot comes back ``size`` batches later,
    so ``size`` must exceed the batches alive at once (queued, being filled, being used)."""

    def __init__(self, size: int):
        self.size, self.slots, self.turn = size, [], 0

    def take(self, n: int, channels: int, shape) -> tuple[np.ndarray, np.ndarray, list]:
        """Zeroed ``x`` ``(n, channels, *shape)`` float32, ``y`` ``(n, 1, *shape)`` uint8 and
        the list in which to record the boxes written ``(j, box)``."""
        if self.slots and self.slots[0][0].shape != (n, channels, *shape):
            self.slots, self.turn = [], 0
        if len(self.slots) < self.size:
            x = np.zeros((n, channels, *shape), np.float32)
            self.slots.append((x, np.zeros((n, 1, *shape), np.uint8), []))
        slot = self.slots[self.turn % len(self.slots)]
        self.turn += 1
        x, y, written = slot
        for j, box in written:
            x[(j, slice(None), *box)] = 0
            y[(j, slice(None), *box)] = 0
        written.clear()
        return slot


def sampler_ring(sampler: PatchSampler, size: int) -> BatchRing | None:
    """The :class:`BatchRing` of ``size`` slots kept on a margin sampler (None otherwise), so
    its arrays are reused across epochs."""
    if not isinstance(sampler, MarginSampler):
        return None
    if getattr(sampler, "ring", None) is None or sampler.ring.size != size:
        sampler.ring = BatchRing(size)
    return sampler.ring


def fill_batch(sampler: PatchSampler, rows, seeds, augment: AugmentConfig, ring=None, before=None):
    """One batch ``x`` ``(B, C, *shape)`` float32, ``y`` ``(B, 1, *shape)`` uint8 of the
    ``rows`` (one per seed), each patch read with its draw's margin and written in place
    (no stacking copy) into zeroed arrays: a :class:`BatchRing`'s next slot, or fresh ones.
    ``before(j)``, if given, runs before patch ``j`` is sampled (e.g. to reseed)."""
    before = before or (lambda j: None)
    if not isinstance(sampler, MarginSampler):
        pairs = []
        for j, r in enumerate(rows):
            before(j)
            pairs.append(sampler.sample(r))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    n, c = len(rows), sampler.in_channels
    if ring is None:
        x = np.zeros((n, c, *sampler.shape), np.float32)
        y, written = np.zeros((n, 1, *sampler.shape), np.uint8), []
    else:
        x, y, written = ring.take(n, c, sampler.shape)
    for j, (row, seed) in enumerate(zip(rows, seeds, strict=True)):
        before(j)
        d = draw_sample(augment, int(seed), MODALITY_CHANNELS)
        read = needed_margin(d, sampler.patch, sampler.margin)
        written.append((j, sampler.sample_into(row, x[j], y[j], read)))
    return x, y


def sampled_batches(
    rows, *, steps: int, batch_size: int, sampler: PatchSampler, seed: int, augment=None, ring=None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`~bratslab.data.loader.epoch_batches` without augmentation (the same draws of
    cases and centres for the same ``seed``), each batch with its ``(B,)`` augmentation
    seeds from ``(seed, step)``; patches cut with ``augment``'s margins, into ``ring``'s
    arrays if one is given (see :class:`BatchRing`)."""
    if not rows:
        raise ValueError("this worker received no training cases (fewer cases than workers?)")
    augment = augment or AugmentConfig(enabled=False)
    sampler.reseed(seed)
    for step in range(steps):
        picks = sampler.rng.integers(len(rows), size=batch_size)
        seeds = np.random.default_rng([int(seed) % 2**63, step, _AUGMENT]).integers(
            2**32, size=batch_size
        )
        x, y = fill_batch(sampler, [rows[int(i)] for i in picks], seeds, augment, ring)
        yield x, y, seeds


def augmented(stream, augment, device) -> Iterator[tuple[Any, Any]]:
    """``(x, y, seeds)`` batches (numpy or tensors) → ``(x, y)`` tensors on ``device``,
    augmented by ``augment`` (a :class:`~bratslab.data.augment_batched.BatchAugment`)."""
    import torch

    try:
        for x, y, seeds in stream:
            xt = torch.as_tensor(x).to(device, non_blocking=True)
            yt = torch.as_tensor(y).to(device, non_blocking=True)
            with torch.no_grad():
                out = augment(xt, yt, [int(s) for s in np.asarray(torch.as_tensor(seeds).cpu())])
            yield out  # outside no_grad: the consumer's step needs gradients
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def take_seeded(stream, steps: int) -> Iterator[tuple[Any, Any, Any]]:
    """``steps`` batches ``(image, label, seed)`` of the Ray Data patch stream."""
    for _ in range(steps):
        batch = next(stream, None)
        if batch is None:
            raise RuntimeError(
                "the Ray Data patch stream ended before the last epoch (it holds epochs * "
                "steps_per_epoch batches per worker)"
            )
        yield batch["image"], batch["label"], batch["seed"]


class DevicePatchMaker(PatchMaker):
    """:class:`PatchMaker` for ``on: device``: sampled patches with the margin, no
    augmentation, and a ``seed`` column ``(N,)`` int64, each draw's augmentation seed."""

    def __init__(self, *, patch_size, in_channels, fg_fraction, augment, seed, threads=1):
        super().__init__(
            patch_size=patch_size,
            in_channels=in_channels,
            fg_fraction=fg_fraction,
            augment={**augment, "enabled": False},
            seed=seed,
            threads=threads,
        )
        self.augment = AugmentConfig.model_validate(augment)
        self.sampler = margin_sampler(self.augment, patch_size, in_channels, fg_fraction, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["case_id"])
        rows = localize_rows({k: str(batch[k][i]) for k in CASE_KEYS} for i in range(n))
        seeds = np.array(
            [
                int(draw_rng(self.seed, int(e), int(d), _AUGMENT).integers(2**32))
                for e, d in zip(batch["epoch"], batch["draw"], strict=True)
            ],
            dtype=np.int64,
        )
        draws = list(zip(batch["epoch"], batch["draw"], strict=True))

        def reseed(j: int) -> None:  # each draw's own sampling seed, as PatchMaker.draw
            self.sampler.reseed(draw_rng(self.seed, int(draws[j][0]), int(draws[j][1]), _SAMPLE))

        x, y = fill_batch(self.sampler, rows, seeds, self.augment, before=reseed)
        return {"image": x, "label": y, "seed": seeds}
