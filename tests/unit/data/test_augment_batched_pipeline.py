"""``data.augment.on: device`` end to end: the config option, the loader's margin sampling,
the whole recipe on a batch (labels, mask, distributions against the MONAI path), and
augmentation off leaving the batches as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from bratslab.data.augment import apply_augment, build_augment
from bratslab.data.augment_batched import BatchAugment
from bratslab.data.augment_config import AugmentConfig
from bratslab.data.augment_draw import affine_margin
from bratslab.data.config import DataSection
from bratslab.data.device_sampling import (
    MarginSampler,
    augmented,
    margin_sampler,
    sampled_batches,
)
from bratslab.data.loader import PatchSampler, epoch_batches

N = 24
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCANNER = dict(  # jobs/train_cpu.yaml's scanner-shift recipe, plus the lesion transforms
    rotate_range_deg=20, scale_range=0.2, noise_std=0.3, blur_prob=0.2, brightness_prob=0.15,
    channel_scale_prob=0.2, channel_scale_range=0.3, intensity_prob=0.0, contrast_prob=0.15,
    lowres_prob=0.25, lowres_zoom=(0.33, 1.0), gamma_invert_prob=0.1, gamma_prob=0.3,
    bias_field_prob=0.3, bias_field_coeff=0.15, rician_prob=0.15, histogram_shift_prob=0.2,
    lesion_paste_prob=0.3, lesion_contrast_prob=0.3,
)  # fmt: skip


def test_on_option_defaults_to_loader_and_reads_yaml():
    assert AugmentConfig().on == "loader"
    # PyYAML reads a bare `on:` key as True: it still means the option
    raw = yaml.safe_load("store: s\naugment:\n  on: device\n  flip_prob: 0.3\n")
    data = DataSection.model_validate(raw)
    assert data.augment.on == "device" and data.augment.flip_prob == 0.3
    with pytest.raises(ValidationError, match="on"):
        AugmentConfig(on="gpu")


@pytest.fixture
def cases(tmp_path):
    """Two store cases (5, 30, 34, 28) float32 / (1, ...) uint8 as ``.npy``, and their rows."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(2):
        x = rng.standard_normal((5, 30, 34, 28)).astype(np.float32)
        x[4] = x[4] > -0.5
        y = np.zeros((1, 30, 34, 28), np.uint8)
        y[0, 10:18, 12:20, 8:14] = rng.integers(1, 4, (8, 8, 6))
        np.save(tmp_path / f"c{k}_x.npy", x)
        np.save(tmp_path / f"c{k}_y.npy", y)
        rows.append(
            {"case_id": f"c{k}", "x_path": str(tmp_path / f"c{k}_x.npy"),
             "y_path": str(tmp_path / f"c{k}_y.npy")}
        )  # fmt: skip
    return rows


def test_margin_sampler_crops_to_the_loader_patch(cases):
    # Same seed → the same case and centre; the centre crop is the plain sampler's patch,
    # the margin holds the volume's neighbouring voxels (zeros beyond its edge).
    plain, wide = PatchSampler([N] * 3, 5, 0.5, 1), MarginSampler([N] * 3, 5, 0.5, 1, [5, 3, 0])
    for _ in range(6):
        (x, y), (xm, ym) = plain.sample(cases[0]), wide.sample(cases[0])
        assert xm.shape == (5, N + 10, N + 6, N) and ym.dtype == np.uint8
        inner = (slice(None), slice(5, 5 + N), slice(3, 3 + N), slice(0, N))
        np.testing.assert_array_equal(xm[inner], x)
        np.testing.assert_array_equal(ym[inner], y)


def test_augmentation_off_leaves_batches_unchanged(cases):
    # on: device with augmentation off samples exactly what on: loader does.
    off = AugmentConfig(enabled=False, on="device")
    assert isinstance(margin_sampler(off, [N] * 3, 5, 1 / 3, 0), PatchSampler)
    kw = dict(steps=3, batch_size=2, seed=11)
    a = list(epoch_batches(cases, sampler=PatchSampler([N] * 3, 5, 1 / 3, 0), augment=off, **kw))
    b = list(sampled_batches(cases, sampler=margin_sampler(off, [N] * 3, 5, 1 / 3, 0), **kw))
    for (xa, ya), (xb, yb, seeds) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert len(set(seeds.tolist())) == 2
    # and the seeds of a (seed, step) are reproducible
    again = list(sampled_batches(cases, sampler=PatchSampler([N] * 3, 5, 1 / 3, 0), **kw))
    assert [s.tolist() for *_, s in again] == [s.tolist() for *_, s in b]


@pytest.mark.parametrize("device", DEVICES)
def test_whole_recipe_on_a_batch(cases, device):
    # The scanner-shift recipe at high probabilities: shapes, dtypes, labels in the label
    # set, mask binary and moved with the labels, reproducible per seed, on the batch's device.
    cfg = AugmentConfig(**{**SCANNER, "rotate_prob": 0.8, "lesion_paste_prob": 1.0}, on="device")
    sampler = margin_sampler(cfg, [N] * 3, 5, 1.0, 0)
    stream = sampled_batches(cases, steps=2, batch_size=3, sampler=sampler, seed=4)
    aug = BatchAugment(cfg, [N] * 3)
    out = []
    for batch in augmented(stream, aug, torch.device(device)):
        assert torch.is_grad_enabled()  # the training step gets gradients between batches
        out.append(batch)
    sampler = margin_sampler(cfg, [N] * 3, 5, 1.0, 0)
    stream = sampled_batches(cases, steps=2, batch_size=3, sampler=sampler, seed=4)
    again = list(augmented(stream, aug, torch.device(device)))
    for (x, y), (x2, y2) in zip(out, again, strict=True):
        assert x.shape == (3, 5, N, N, N) and x.dtype == torch.float32
        assert y.shape == (3, 1, N, N, N) and y.dtype == torch.uint8
        assert x.device.type == device
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3}
        assert set(torch.unique(x[:, 4]).tolist()) <= {0.0, 1.0}
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, x2)
        assert torch.equal(y, y2)


def _stats(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Per-patch statistics: modality mean, std, 5th/95th percentile, tumour fraction."""
    img = x[:4]
    return [img.mean(), img.std(), *np.percentile(img, [5, 95]), float((y > 0).mean())]


def test_recipe_output_statistics_match_monai():
    # The same recipe (scanner shift, every transform at least at its configured rate) on the
    # same patch, 48 draws each: per-patch output statistics agree in distribution — the mean
    # over draws within 0.35 of their spread (standard error here ~0.2 of it).
    rng = np.random.default_rng(0)
    g = np.mgrid[0:N, 0:N, 0:N].astype(np.float32) / N
    mask = (((g - 0.5) ** 2).sum(0) < 0.2).astype(np.float32)
    img = np.stack([np.sin(5 * g[0] + k) + g[1] for k in range(4)]) * mask
    img = (img + 0.3 * rng.standard_normal(img.shape) * mask).astype(np.float32)
    x = np.concatenate([img, mask[None]])
    y = np.zeros((1, N, N, N), np.uint8)
    y[0, 8:15, 9:16, 10:17] = 2
    y[0, 10:13, 11:14, 12:15] = 3
    cfg = AugmentConfig(**SCANNER)
    n = 48
    theirs = []
    aug = BatchAugment(cfg, [N] * 3)
    xs, ys = torch.as_tensor(np.repeat(x[None], n, 0)), torch.as_tensor(np.repeat(y[None], n, 0))
    xo, yo = aug(xs, ys, list(range(n)))
    ours = np.array([_stats(xo[i].numpy(), yo[i].numpy()) for i in range(n)])
    for s in range(n):
        xm, ym = apply_augment(build_augment(cfg, 1000 + s), x, y)
        theirs.append(_stats(xm, ym))
    theirs = np.array(theirs)
    spread = np.maximum(theirs.std(0), ours.std(0)) + 1e-6
    gap = np.abs(ours.mean(0) - theirs.mean(0)) / spread
    assert (gap < 0.35).all(), (gap, ours.mean(0), theirs.mean(0))
    ratio = ours.std(0) / (theirs.std(0) + 1e-6)
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio


def test_affine_margin_grows_with_the_recipe():
    small = affine_margin(AugmentConfig(rotate_range_deg=10, scale_range=0.1), [64] * 3)
    large = affine_margin(AugmentConfig(rotate_range_deg=30, scale_range=0.2), [64] * 3)
    assert 0 < small[0] < large[0]


def _worker(cases, tmp_path, *overrides):
    """A rank-0 :class:`~bratslab.train.loop.Worker` of the smoke job on ``cases``, built as
    the loop builds its sampler and augmenter (no model: only the data path is exercised)."""
    from pathlib import Path
    from types import SimpleNamespace

    from bratslab.data.augment_batched import BatchAugment
    from bratslab.jobs.spec import load_job
    from bratslab.train.loop import Worker

    job = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"
    spec = load_job(job, [f"data.store={tmp_path}", "training.patch_size=[24,24,24]", *overrides])
    aug = spec.data.augment
    sampler = margin_sampler(aug, [N] * 3, 5, spec.data.foreground_oversample, spec.training.seed)
    w = Worker(spec, 0, 1, SimpleNamespace(device=torch.device("cpu")), None, None, [N] * 3,
               sampler, [])  # fmt: skip
    if aug.on == "device" and aug.enabled:
        w.augmenter = BatchAugment(aug, [N] * 3)
    return w


def test_loop_hook_thread_loader(cases, tmp_path):
    # The training loop's thread loader with on: device yields augmented patch-size tensors,
    # the same for the same epoch; with augmentation off, exactly on: loader's batches.
    from bratslab.train.loop import epoch_batches_of

    w = _worker(cases, tmp_path, "data.augment.on=device")
    first = list(epoch_batches_of(w, cases, 1))
    again = list(epoch_batches_of(_worker(cases, tmp_path, "data.augment.on=device"), cases, 1))
    assert len(first) == w.spec.training.steps_per_epoch
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert isinstance(x, torch.Tensor) and x.shape == (2, 5, N, N, N)
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3}
        assert torch.equal(y, y2)
        torch.testing.assert_close(x, x2)
    off = ["data.augment.enabled=false"]
    plain = list(epoch_batches_of(_worker(cases, tmp_path, *off), cases, 1))
    dev = list(epoch_batches_of(_worker(cases, tmp_path, *off, "data.augment.on=device"), cases, 1))
    for (x, y), (x2, y2) in zip(plain, dev, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))


def test_partial_margin_reads_what_the_resampling_needs(cases):
    # The loader reads only each draw's needed margin; the resampled patch is the same as
    # from the fully read margin (what the grid reads lies inside the part read).
    from bratslab.data.augment_batched import spatial
    from bratslab.data.augment_draw import draw_sample, needed_margin
    from bratslab.data.device_sampling import fill_batch

    cfg = AugmentConfig(rotate_prob=1.0, scale_prob=0.5, rotate_range_deg=30, scale_range=0.2)
    seeds = list(range(12))
    full = MarginSampler([N] * 3, 5, 0.5, 3, affine_margin(cfg, [N] * 3))
    part = MarginSampler([N] * 3, 5, 0.5, 3, affine_margin(cfg, [N] * 3))
    xf = np.stack([full.sample(cases[s % 2])[0] for s in seeds])
    xp, yp = fill_batch(part, [cases[s % 2] for s in seeds], seeds, cfg)
    draws = [draw_sample(cfg, s, 4) for s in seeds]
    assert any(needed_margin(d, [N] * 3, full.margin) < list(full.margin) for d in draws)
    outs = [spatial(torch.as_tensor(x), torch.as_tensor(yp), draws, [N] * 3)[0] for x in (xf, xp)]
    torch.testing.assert_close(outs[0], outs[1])


def test_batch_ring_reuse_equals_fresh_arrays(cases):
    # Reused arrays (only the last batch's boxes zeroed again) hold what fresh ones would.
    from bratslab.data.device_sampling import BatchRing

    cfg = AugmentConfig(on="device", rotate_prob=0.5, scale_prob=0.5)

    def batches(ring):
        sampler = margin_sampler(cfg, [N] * 3, 5, 0.5, 0)
        stream = sampled_batches(
            cases, steps=6, batch_size=2, sampler=sampler, seed=9, augment=cfg, ring=ring
        )
        return [(x.copy(), y.copy()) for x, y, _ in stream]

    ring = BatchRing(2)
    for (x, y), (xr, yr) in zip(batches(None), batches(ring), strict=True):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    assert len(ring.slots) == 2


def test_device_patch_maker_samples_what_patch_maker_does(cases):
    # The Ray Data UDF for on: device (called here without Ray): the same draws' patches as
    # PatchMaker without augmentation, inside a margin, and each draw's augmentation seed.
    from bratslab.data.device_sampling import DevicePatchMaker
    from bratslab.data.patch_pipeline import _AUGMENT, PatchMaker, choose_cases, draw_rng

    cfg = AugmentConfig(on="device")
    kw = dict(patch_size=[N] * 3, in_channels=5, fg_fraction=0.5, seed=4)
    batch = choose_cases({"id": np.arange(4)}, cases=cases, seed=4, per_epoch=2)
    plain = PatchMaker(**kw, augment=AugmentConfig(enabled=False).model_dump(mode="json"))(batch)
    dev = DevicePatchMaker(**kw, augment=cfg.model_dump(mode="json"))(batch)
    m = affine_margin(cfg, [N] * 3)
    assert dev["image"].shape == (4, 5, *(N + 2 * k for k in m))
    inner = (slice(None), slice(None), *(slice(k, k + N) for k in m))
    np.testing.assert_array_equal(dev["image"][inner], plain["image"])
    np.testing.assert_array_equal(dev["label"][inner], plain["label"])
    want = [
        int(draw_rng(4, e, d, _AUGMENT).integers(2**32))
        for e, d in [(0, 0), (0, 1), (1, 2), (1, 3)]
    ]
    assert dev["seed"].tolist() == want
