"""Training patches made by a Ray Data actor pool (``data.loader: ray``).

One stream per training attempt, built on the driver and sharded by Ray Train::

    range(epochs * draws_per_epoch)                  draw indices, generated lazily
      -> map_batches(choose_cases)                   one case row per draw: case_id, x_path,
                                                     y_path, epoch, draw (Ray tasks, cheap)
      -> repartition(target_num_rows_per_block=B)    blocks of one training batch, so that
                                                     every actor gets work
      -> map_batches(PatchMaker, ActorPoolStrategy(size=n), num_cpus=c)
                                                     image (C, X, Y, Z) float32,
                                                     label (1, X, Y, Z) uint8
      -> TorchTrainer(datasets={"train": ds})        streaming_split(world, equal=True)
      -> get_dataset_shard("train").iter_torch_batches(batch_size=B, prefetch_batches=k)

Sampling and augmentation are the thread loader's (:mod:`bratslab.data.loader`): a case drawn
uniformly, a patch centred on a tumour voxel with probability ``foreground_oversample`` (else
anywhere), the MONAI pipeline of :func:`bratslab.data.augment.build_augment`. Every draw has its
own seeds, derived from ``(training.seed, epoch, draw index)``: each epoch draws fresh patches
and a draw gives the same patch on any actor. What Ray Data decides instead is which worker,
and which step, a patch lands in (``streaming_split`` hands blocks to whichever worker asks).

One stream for the whole attempt, not one execution per epoch: every execution starts a new
actor pool (imports, foreground caches) and drains the pipeline at the epoch's end, while one
stream keeps the actors warm and keeps making patches while the workers validate. A worker
group restarted from a checkpoint at epoch e starts a fresh stream at draw 0: patches from the
same distribution, not the ones the interrupted attempt would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bratslab.data.augment import build_augment
from bratslab.data.augment_config import AugmentConfig
from bratslab.data.loader import PatchSampler, augment_patch
from bratslab.data.remote import localize_rows

CASE_KEYS = ("case_id", "x_path", "y_path")


_CASE, _SAMPLE, _AUGMENT = 0, 1, 2  # independent seed streams of one draw


def draw_rng(seed: int, epoch: int, draw: int, stream: int) -> np.random.Generator:
    """The generator of one purpose (``_CASE``, ``_SAMPLE``, ``_AUGMENT``) of one draw."""
    return np.random.default_rng([seed % 2**63, epoch, draw, stream])


def pool_size(loader_cpus: float, num_workers: int) -> tuple[int, float]:
    """``(actors, CPUs per actor)`` for ``loader_cpus`` per Train worker: as many actors as
    whole CPUs (at least one), sharing ``loader_cpus * num_workers`` CPUs equally."""
    total = loader_cpus * num_workers
    actors = max(1, math.ceil(total - 1e-9))
    return actors, total / actors


def choose_cases(
    batch: dict[str, np.ndarray], *, cases: Sequence[dict[str, Any]], seed: int, per_epoch: int
) -> dict[str, np.ndarray]:
    """Draw indices ``{"id": (N,)}`` → case rows: per draw a case picked uniformly (seeded by
    the draw), its ``epoch`` (``id // per_epoch``) and global ``draw`` index."""
    draws = np.asarray(batch["id"], dtype=np.int64)
    epochs = draws // per_epoch
    picks = [
        int(draw_rng(seed, int(e), int(d), _CASE).integers(len(cases)))
        for e, d in zip(epochs, draws, strict=True)
    ]
    out = {k: np.array([cases[i][k] for i in picks]) for k in CASE_KEYS}
    return {**out, "epoch": epochs, "draw": draws}


class PatchMaker:
    """The ``map_batches`` UDF of the actor pool: a batch of case rows (``case_id``,
    ``x_path``, ``y_path``, ``epoch``, ``draw``; N rows) → ``{"image": (N, C, X, Y, Z) float32,
    "label": (N, 1, X, Y, Z) uint8}``, one sampled and augmented patch per row.

    Stateful, hence an actor: the MONAI pipeline is built once and each case's tumour
    coordinates are found once (:class:`PatchSampler` caches them).
    """

    def __init__(
        self,
        *,
        patch_size: Sequence[int],
        in_channels: int,
        fg_fraction: float,
        augment: dict[str, Any],
        seed: int,
        threads: int = 1,
    ) -> None:
        import torch

        # MONAI's resampling runs on torch: one actor, its own CPUs' worth of threads.
        torch.set_num_threads(max(int(threads), 1))
        self.seed = seed
        self.sampler = PatchSampler(patch_size, in_channels, fg_fraction, seed)
        self.compose = build_augment(AugmentConfig.model_validate(augment), seed)

    def draw(self, row: dict[str, Any], epoch: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
        """One patch ``(x, y)``: the sampler and the augmentation reseeded for this draw."""
        self.sampler.reseed(draw_rng(self.seed, epoch, draw, _SAMPLE))
        if self.compose is not None:
            aug_seed = int(draw_rng(self.seed, epoch, draw, _AUGMENT).integers(2**32))
            self.compose.set_random_state(seed=aug_seed)
        xp, yp = self.sampler.sample(row)
        return augment_patch(self.compose, xp, yp, has_mask=self.sampler.in_channels == 5)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["case_id"])
        # s3:// paths → this node's verified copy of the store (synced once per actor)
        rows = localize_rows({k: str(batch[k][i]) for k in CASE_KEYS} for i in range(n))
        xs, ys = [], []
        for row, epoch, draw in zip(rows, batch["epoch"], batch["draw"], strict=True):
            x, y = self.draw(row, int(epoch), int(draw))
            xs.append(x)
            ys.append(y)
        return {"image": np.stack(xs), "label": np.stack(ys)}
