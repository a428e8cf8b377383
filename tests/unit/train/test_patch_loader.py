"""Patch sampling from memory-mapped store volumes, augmentation and prefetching."""

from __future__ import annotations

import numpy as np
import pytest

from bratslab.data.augment import apply_augment, build_augment
from bratslab.data.augment_config import AugmentConfig
from bratslab.data.loader import PatchSampler, case_rows, epoch_batches, prefetch
from bratslab.data.store import Store


@pytest.fixture
def rows(tiny_store):
    return case_rows(Store(tiny_store), fold=0, split="train")


def test_case_rows_follow_the_fold(tiny_store, rows):
    store = Store(tiny_store)
    assert [r["case_id"] for r in rows] == store.case_ids(fold=0, split="train")
    val = case_rows(store, fold=0, split="val")
    assert {r["case_id"] for r in rows}.isdisjoint({r["case_id"] for r in val})
    assert all(r["x_path"].endswith("_x.npy") for r in rows)


def test_foreground_oversampling_centres_patches_on_tumour(rows):
    always = PatchSampler([8, 8, 8], 5, fg_fraction=1.0, seed=0)
    never = PatchSampler([8, 8, 8], 5, fg_fraction=0.0, seed=0)
    fg_always = [always.sample(rows[i % len(rows)])[1][0, 4, 4, 4] > 0 for i in range(30)]
    fg_never = [never.sample(rows[i % len(rows)])[1][0, 4, 4, 4] > 0 for i in range(30)]
    assert all(fg_always)
    assert sum(fg_never) < sum(fg_always)


def test_patches_read_through_mmap_and_pad_small_volumes(rows):
    sampler = PatchSampler([48, 16, 16], 4, fg_fraction=0.5, seed=1)
    x, y = sampler.sample(rows[0])
    assert x.shape == (4, 48, 16, 16) and x.dtype == np.float32
    assert y.shape == (1, 48, 16, 16) and y.dtype == np.uint8
    assert np.all(x[:, 40:] == 0)  # the store volume is 32 wide: the rest is zero padding


def test_epoch_batches_are_deterministic_per_seed(rows):
    def run(seed):
        sampler = PatchSampler([16, 16, 16], 5, fg_fraction=1 / 3, seed=0)
        return list(
            epoch_batches(
                rows, steps=2, batch_size=3, sampler=sampler, augment=AugmentConfig(), seed=seed
            )
        )

    a, b, c = run(5), run(5), run(6)
    assert a[0][0].shape == (3, 5, 16, 16, 16) and a[0][1].shape == (3, 1, 16, 16, 16)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], c[0][0])


def test_augmentation_keeps_shapes_labels_and_binary_mask(rows):
    x, y = PatchSampler([16, 16, 16], 5, 1.0, seed=0).sample(rows[0])
    everything = AugmentConfig(
        flip_prob=1, rotate_prob=1, scale_prob=1, noise_prob=1, intensity_prob=1, gamma_prob=1
    )
    xa, ya = apply_augment(build_augment(everything, seed=3), x, y)
    assert xa.shape == x.shape and xa.dtype == np.float32
    assert ya.shape == y.shape and ya.dtype == np.uint8
    assert set(np.unique(ya)) <= {0, 1, 2, 3}
    assert set(np.unique(xa[-1])) <= {0.0, 1.0}
    assert not np.array_equal(xa, x)
    assert build_augment(AugmentConfig(enabled=False), 0) is None


def test_empty_shard_and_loader_errors_surface():
    with pytest.raises(ValueError, match="no training cases"):
        next(
            epoch_batches(
                [],
                steps=1,
                batch_size=1,
                sampler=PatchSampler([8, 8, 8], 5, 0.3, 0),
                augment=AugmentConfig(),
                seed=0,
            )
        )

    def broken():
        yield 1
        raise OSError("disk gone")

    stream = prefetch(broken(), depth=2)
    assert next(stream) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(stream)
