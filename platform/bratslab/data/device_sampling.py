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

from bratslab.data.augment_draw import affine_margin
from bratslab.data.config import AugmentConfig
from bratslab.data.loader import PatchSampler, epoch_batches
from bratslab.data.patch_pipeline import _AUGMENT, PatchMaker, draw_rng


class MarginSampler(PatchSampler):
    """:class:`PatchSampler` whose patches ``(C, X+2m, Y+2m, Z+2m)`` carry a ``margin`` ``m``
    per axis around the patch the base class would cut (the same random draws, so its centre
    crop is that patch exactly); voxels outside the volume are 0."""

    def __init__(self, patch_size, in_channels, fg_fraction, seed, margin: Sequence[int]):
        super().__init__(patch_size, in_channels, fg_fraction, seed)
        self.margin = np.asarray(margin, dtype=int)

    def sample(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x = np.load(row["x_path"], mmap_mode="r")
        y = np.load(row["y_path"], mmap_mode="r")
        shape = np.asarray(x.shape[1:])
        fg = self._foreground(row, y) if self.rng.random() < self.fg_fraction else None
        if fg is not None and len(fg):
            centre = fg[self.rng.integers(len(fg))]
        else:
            centre = np.array([self.rng.integers(0, s) for s in shape])
        start = np.clip(centre - self.patch // 2, 0, np.maximum(shape - self.patch, 0))
        lo, hi = start - self.margin, start + self.patch + self.margin
        src = tuple(
            slice(int(a), int(b))
            for a, b in zip(np.maximum(lo, 0), np.minimum(hi, shape), strict=True)
        )
        size = tuple(int(v) for v in hi - lo)
        xp = np.zeros((self.in_channels, *size), np.float32)
        yp = np.zeros((1, *size), np.uint8)
        dst = tuple(slice(int(s.start - a), int(s.stop - a)) for s, a in zip(src, lo, strict=True))
        xp[(slice(None), *dst)] = x[(slice(0, self.in_channels), *src)]
        yp[(slice(None), *dst)] = y[(slice(0, 1), *src)]
        return xp, yp


def margin_sampler(
    augment: AugmentConfig, patch_size, in_channels: int, fg_fraction: float, seed: int
) -> PatchSampler:
    """The loader's sampler for ``augment.on``: the plain one, or one with the margin."""
    if augment.on == "loader":
        return PatchSampler(patch_size, in_channels, fg_fraction, seed)
    margin = affine_margin(augment, patch_size)
    return MarginSampler(patch_size, in_channels, fg_fraction, seed, margin)


def sampled_batches(
    rows, *, steps: int, batch_size: int, sampler: PatchSampler, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`~bratslab.data.loader.epoch_batches` without augmentation (the same draws of
    cases and centres for the same ``seed``), each batch with its ``(B,)`` augmentation
    seeds from ``(seed, step)``."""
    off = AugmentConfig(enabled=False)
    batches = epoch_batches(
        rows, steps=steps, batch_size=batch_size, sampler=sampler, augment=off, seed=seed
    )
    for step, (x, y) in enumerate(batches):
        rng = np.random.default_rng([int(seed) % 2**63, step, _AUGMENT])
        yield x, y, rng.integers(2**32, size=len(x))


def augmented(stream, augment, device) -> Iterator[tuple[Any, Any]]:
    """``(x, y, seeds)`` batches (numpy or tensors) → ``(x, y)`` tensors on ``device``,
    augmented by ``augment`` (a :class:`~bratslab.data.augment_batched.BatchAugment`)."""
    import torch

    try:
        for x, y, seeds in stream:
            xt = torch.as_tensor(x).to(device, non_blocking=True)
            yt = torch.as_tensor(y).to(device, non_blocking=True)
            with torch.no_grad():
                yield augment(xt, yt, [int(s) for s in np.asarray(torch.as_tensor(seeds).cpu())])
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
        cfg = AugmentConfig.model_validate(augment)
        self.sampler = margin_sampler(cfg, patch_size, in_channels, fg_fraction, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        out["seed"] = np.array(
            [
                int(draw_rng(self.seed, int(e), int(d), _AUGMENT).integers(2**32))
                for e, d in zip(batch["epoch"], batch["draw"], strict=True)
            ],
            dtype=np.int64,
        )
        return out
