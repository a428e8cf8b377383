"""The Ray Data patch pipeline's functions, called directly (no Ray): pool sizing, the case
choice per draw and the ``map_batches`` UDF that samples and augments patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.loader import PatchSampler, case_rows
from bratslab.data.patch_pipeline import PatchMaker, choose_cases, pool_size
from bratslab.data.store import Store
from bratslab.jobs.spec import load_job

ROOT = Path(__file__).resolve().parents[3]
PATCH = [16, 16, 16]


@pytest.fixture
def rows(tiny_store):
    return case_rows(Store(tiny_store), fold=0, split="train")


def _batch(rows, draws, per_epoch=8, seed=0):
    return choose_cases({"id": np.asarray(draws)}, cases=rows, seed=seed, per_epoch=per_epoch)


def _maker(fg=1 / 3, augment=None, in_channels=5, seed=0):
    augment = augment if augment is not None else AugmentConfig().model_dump(mode="json")
    return PatchMaker(
        patch_size=PATCH, in_channels=in_channels, fg_fraction=fg, augment=augment, seed=seed
    )


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [(1.0, 1, (1, 1.0)), (0.5, 1, (1, 0.5)), (1.5, 1, (2, 0.75)), (1.5, 2, (3, 1.0))],
)
def test_pool_has_one_actor_per_whole_cpu_sharing_them_equally(cpus, workers, expected):
    assert pool_size(cpus, workers) == expected


def test_case_choice_is_seeded_per_draw_and_labels_the_epoch(rows):
    a = _batch(rows, range(16))
    assert list(a["epoch"]) == [0] * 8 + [1] * 8 and list(a["draw"]) == list(range(16))
    # A draw picks the same case however the draws are split into batches.
    b = _batch(rows, range(5, 16))
    assert list(b["case_id"]) == list(a["case_id"][5:])
    assert not np.array_equal(_batch(rows, range(16), seed=1)["case_id"], a["case_id"])
    many = _batch(rows, range(600), per_epoch=600)["case_id"]
    counts = [int((many == r["case_id"]).sum()) for r in rows]
    assert min(counts) > 600 / len(rows) / 2  # every case is drawn, none starved


def test_udf_makes_numpy_patches_reproducible_per_draw_and_fresh_per_epoch(rows):
    batch = _batch(rows, range(6), per_epoch=3)  # draws 0-2: epoch 0, 3-5: epoch 1
    out = _maker()(batch)
    assert set(out) == {"image", "label"}
    assert out["image"].shape == (6, 5, *PATCH) and out["image"].dtype == np.float32
    assert out["label"].shape == (6, 1, *PATCH) and out["label"].dtype == np.uint8
    again = _maker()(batch)  # another actor, same draws
    assert np.array_equal(out["image"], again["image"])
    assert np.array_equal(out["label"], again["label"])
    # Seeds belong to draws, not batches: a draw alone gives the patch it gave in a batch.
    alone = _maker()({k: v[4:5] for k, v in batch.items()})
    assert np.array_equal(alone["image"][0], out["image"][4])
    # The same case drawn in another epoch is another patch (per-epoch reseeding).
    later = {**batch, "epoch": batch["epoch"] + 1}
    assert not np.array_equal(_maker()(later)["image"], out["image"])
    assert set(np.unique(out["image"][:, -1])) <= {0.0, 1.0}  # the mask channel stays binary


def test_patch_rows_become_arrow_tensor_columns_not_pickled_objects(rows):
    """How Ray Data stores the UDF's output block (no cluster needed for the conversion)."""
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block(_maker()(_batch(rows, range(2))))
    image, label = block.schema.field("image").type, block.schema.field("label").type
    assert "TensorType" in type(image).__name__ and "TensorType" in type(label).__name__
    assert image.shape == (5, *PATCH) and label.shape == (1, *PATCH)


def test_udf_oversamples_foreground_like_the_thread_sampler(rows):
    """No augmentation, so the centre voxel is the sampled one: fg 1 always centres on tumour,
    fg 0 rarely; the thread loader's sampler gives the same picture."""
    off = AugmentConfig(enabled=False).model_dump(mode="json")
    batch = _batch(rows, range(40), per_epoch=40)
    c = PATCH[0] // 2
    always = _maker(fg=1.0, augment=off)(batch)["label"][:, 0, c, c, c] > 0
    never = _maker(fg=0.0, augment=off)(batch)["label"][:, 0, c, c, c] > 0
    assert always.all() and never.sum() < always.sum()
    thread = PatchSampler(PATCH, 5, fg_fraction=1.0, seed=0)
    assert all(thread.sample(rows[i % len(rows)])[1][0, c, c, c] > 0 for i in range(20))


def test_udf_runs_the_jobs_scanner_shift_augmentation_with_and_without_mask(rows):
    job = load_job(ROOT / "jobs" / "train_segresnet.yaml", [f"data.store={ROOT}"])
    full = job.data.augment.model_dump(mode="json")  # what the driver ships to the actors
    batch = _batch(rows, range(4), per_epoch=4)
    four = _maker(augment=full, in_channels=4)(batch)
    assert four["image"].shape == (4, 4, *PATCH) and four["image"].dtype == np.float32
    plain = _maker(augment=AugmentConfig(enabled=False).model_dump(mode="json"), in_channels=4)
    assert not np.array_equal(four["image"], plain(batch)["image"])
