"""Training data path: case table → per-worker patch sampling + augmentation → batches.

The driver turns the store's manifest into a table of *case rows* (ids and file paths, a few
hundred bytes each) that travels in the training loop's config; each worker takes every N-th
row (:func:`bratslab.train.loop.train_shard`; no Ray Data split, whose actors would share the
cores with the step). :func:`case_dataset` makes the same table a Ray Data dataset instead.
Each worker opens its cases' volumes with ``np.load(mmap_mode="r")`` and copies out only the
patches it samples, so no process holds the dataset in memory. Patches are centred on a tumour
voxel with probability ``foreground_oversample`` (nnU-Net: 1/3), otherwise anywhere; a background
thread prepares the next batches while the model trains on the current one (``data.loader:
thread``). ``data.loader: ray`` runs the same sampler and augmentation on a Ray Data actor pool
instead (:mod:`bratslab.data.patch_pipeline`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bratslab.data.augment import apply_augment, build_augment
from bratslab.data.augment_config import AugmentConfig

MAX_FG_COORDS = 20_000  # per case: enough to sample centres from, small enough to cache


def case_rows(store, fold: int, split: str) -> list[dict[str, Any]]:
    """Rows ``{"case_id", "x_path", "y_path", "zooms"}`` (zooms in mm) of the fold's labelled
    ``split`` ("train"/"val") cases; absolute paths, so any node seeing the shared folder can
    read them."""
    root = Path(store.path).absolute()
    cases = {c["id"]: c for c in store.manifest["cases"] if c.get("has_label")}
    rows = [
        {
            "case_id": cid,
            "x_path": str(root / f"{cid}_x.npy"),
            "y_path": str(root / f"{cid}_y.npy"),
            "zooms": [float(z) for z in cases[cid].get("zooms") or (1.0, 1.0, 1.0)],
        }
        for cid in store.case_ids(fold=fold, split=split)
        if cid in cases
    ]
    if not rows:
        raise ValueError(f"{root}: fold {fold} has no labelled {split} cases")
    return rows


def case_dataset(rows: Sequence[dict[str, Any]]):
    """The case table as a Ray Data dataset (one row per case)."""
    import ray.data  # Ray: the table is what Ray Train shards across workers

    return ray.data.from_items(list(rows))


class PatchSampler:
    """Draws ``(x, y)`` patches of ``patch_size`` from memory-mapped store volumes.

    ``x`` ``(C, X, Y, Z)`` float32 (the first ``in_channels`` store channels), ``y``
    ``(1, X, Y, Z)`` uint8. Volumes smaller than the patch are zero-padded.
    """

    def __init__(
        self, patch_size: Sequence[int], in_channels: int, fg_fraction: float, seed: int
    ) -> None:
        self.patch = np.asarray(patch_size, dtype=int)
        self.in_channels = in_channels
        self.fg_fraction = fg_fraction
        self.rng = np.random.default_rng(seed)
        self._fg: dict[str, np.ndarray] = {}

    def reseed(self, seed) -> None:
        """Restart the draws from ``seed`` (anything ``np.random.default_rng`` accepts)."""
        self.rng = np.random.default_rng(seed)

    def _foreground(self, row: dict[str, Any], y: np.ndarray) -> np.ndarray:
        """Tumour voxel coordinates ``(N, 3)`` (a random subset), computed once per case."""
        cid = row["case_id"]
        if cid not in self._fg:
            coords = np.argwhere(np.asarray(y[0]) > 0)
            if len(coords) > MAX_FG_COORDS:
                pick = np.random.default_rng(0).choice(len(coords), MAX_FG_COORDS, replace=False)
                coords = coords[pick]
            self._fg[cid] = coords.astype(np.int32)
        return self._fg[cid]

    def draw_start(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open the case (memory-mapped) and draw where a patch starts: ``(x (C, X, Y, Z),
        y (1, X, Y, Z), start (3,) voxels)``, centred on a foreground voxel with probability
        ``fg_fraction`` (the sampler's seeded draws, in a fixed order)."""
        x = np.load(row["x_path"], mmap_mode="r")
        y = np.load(row["y_path"], mmap_mode="r")
        shape = np.asarray(x.shape[1:])
        fg = self._foreground(row, y) if self.rng.random() < self.fg_fraction else None
        if fg is not None and len(fg):
            centre = fg[self.rng.integers(len(fg))]
        else:
            centre = np.array([self.rng.integers(0, s) for s in shape])
        return x, y, np.clip(centre - self.patch // 2, 0, np.maximum(shape - self.patch, 0))

    def sample(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x, y, start = self.draw_start(row)
        shape = np.asarray(x.shape[1:])
        stop = np.minimum(start + self.patch, shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        xp = np.asarray(x[(slice(0, self.in_channels), *sl)], dtype=np.float32)
        yp = np.asarray(y[(slice(0, 1), *sl)], dtype=np.uint8)
        if xp.shape[1:] != tuple(self.patch):
            pad = [(0, 0)] + [
                (0, int(p - s)) for p, s in zip(self.patch, xp.shape[1:], strict=True)
            ]
            xp, yp = np.pad(xp, pad), np.pad(yp, pad)
        return xp, yp


def epoch_batches(
    rows: Sequence[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    sampler: PatchSampler,
    augment: AugmentConfig,
    seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches ``x`` ``(B, C, X, Y, Z)`` float32, ``y`` ``(B, 1, X, Y, Z)`` uint8 of
    augmented patches from randomly chosen ``rows`` (this worker's shard of the case table)."""
    if not rows:
        raise ValueError("this worker received no training cases (fewer cases than workers?)")
    sampler.reseed(seed)
    compose = build_augment(augment, seed)
    for _ in range(steps):
        xs, ys = [], []
        for i in sampler.rng.integers(len(rows), size=batch_size):
            xp, yp = sampler.sample(rows[int(i)])
            xp, yp = augment_patch(compose, xp, yp, has_mask=sampler.in_channels == 5)
            xs.append(xp)
            ys.append(yp)
        yield np.stack(xs), np.stack(ys)


def augment_patch(
    compose, x: np.ndarray, y: np.ndarray, *, has_mask: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apply_augment` for one sampled patch; without a foreground-mask channel
    (``has_mask`` False) the patch is augmented with a dummy one, which is then dropped.
    Shapes and dtypes are kept: ``x`` ``(C, X, Y, Z)`` float32, ``y`` ``(1, X, Y, Z)`` uint8."""
    if has_mask:
        return apply_augment(compose, x, y)
    if compose is None:
        return x, y
    xa, ya = apply_augment(compose, np.concatenate([x, x[:1] * 0]), y)
    return xa[:-1], ya


def prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run ``iterator`` in a daemon thread, ``depth`` items ahead (numpy and MONAI release the
    GIL for the heavy parts, so sampling overlaps the model's forward/backward)."""
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name="bratslab-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():  # unblock a producer waiting on a full queue
            q.get_nowait()
