"""``data.augment.on: device``: each batched torch transform against the MONAI path.

Per transform, the same drawn parameters given to MONAI's deterministic transform (the one the
MONAI ``Rand*`` transform calls) and to :mod:`bratslab.data.augment_batched` give the same
output: exact for flips, crops, intensity scales and shifts; within 1e-4 (float32 rounding of
different operation orders) for resampling, blur, bias field, contrast, gamma, resolution and
histogram curves; labels of the rotated patch within 0.5 % of voxels (nearest-neighbour ties).
The noise transforms draw their fields from another generator than MONAI's, so there the
distributions are compared. Every test runs on the CPU and, where a GPU is present, on CUDA.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai import transforms as T

from bratslab.data.augment_batched import (
    BatchAugment,
    _magnitude,
    bias_field,
    blur,
    brain_of,
    histogram_shift,
    low_resolution,
    spatial,
)
from bratslab.data.augment_config import AugmentConfig
from bratslab.data.augment_draw import SampleDraw, affine_margin, draw_sample
from bratslab.data.augment_transforms import MagnitudeDomaind, RandThickSlicesd

N = 24
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _none(**kw) -> SampleDraw:
    """A draw in which nothing fires, but ``kw``."""
    base = {f.name: None for f in dataclasses.fields(SampleDraw)}
    base.update(flips=(False, False, False), lesion_paste=False, lesion_contrast=False, seed=7)
    return SampleDraw(**{**base, **kw})


@pytest.fixture
def patch():
    """``x`` (5, N, N, N) z-scored-like modalities (0 outside the brain) and mask, ``y``
    (1, N, N, N) labels of an off-centre lesion (as in test_augment.py)."""
    rng = np.random.default_rng(0)
    g = np.mgrid[0:N, 0:N, 0:N].astype(np.float32) / N
    mask = (((g - 0.5) ** 2).sum(0) < 0.16).astype(np.float32)
    image = np.stack([np.sin(6 * g[0] + k) + g[1] - g[2] * k for k in range(4)])
    image = (image + 0.2 * rng.standard_normal(image.shape)).astype(np.float32) * mask
    y = np.zeros((1, N, N, N), np.uint8)
    y[0, 8:16, 6:12, 10:18] = 2
    y[0, 10:14, 7:10, 12:16] = 3
    y[0, 11:13, 8:9, 13:15] = 1
    return np.concatenate([image, mask[None]]), y


def _t(a, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).to(device)


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flips", [(True, False, False), (False, True, True), (True, True, True)])
def test_flips_equal_monai(patch, device, flips):
    x, y = patch
    xo, yo = spatial(_t(x[None], device), _t(y[None], device), [_none(flips=flips)], [N] * 3)
    ref = x
    axes = [a for a in range(3) if flips[a]]
    ref, ref_y = T.Flip(spatial_axis=axes)(x), T.Flip(spatial_axis=axes)(y)
    np.testing.assert_array_equal(_np(xo[0]), _np(ref))
    np.testing.assert_array_equal(_np(yo[0]), _np(ref_y))


def _monai_affine(x, y, d: SampleDraw):
    """MONAI's path for a draw: RandFlipd's flips, then Affine (bilinear; labels nearest)."""
    axes = [a for a in range(3) if d.flips[a]]
    if axes:
        x, y = T.Flip(spatial_axis=axes)(x), T.Flip(spatial_axis=axes)(y)
    kw = dict(rotate_params=d.rotate, scale_params=d.scale, padding_mode="zeros")
    xo = T.Affine(**kw, mode="bilinear", image_only=True)(x)
    yo = T.Affine(**kw, mode="nearest", image_only=True)(torch.as_tensor(y).float())
    return _np(xo), _np(yo)


DRAWS = [
    _none(rotate=(0.3, -0.2, 0.1)),
    _none(scale=(0.85, 1.1, 1.2)),
    _none(rotate=(-0.4, 0.25, 0.5), scale=(1.15, 0.9, 1.0), flips=(True, False, True)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("draw", DRAWS, ids=["rotate", "scale", "flip-rotate-scale"])
def test_affine_equals_monai(patch, device, draw):
    x, y = patch
    xo, yo = spatial(_t(x[None], device), _t(y[None], device), [draw], [N] * 3)
    ref_x, ref_y = _monai_affine(x, y, draw)
    np.testing.assert_allclose(_np(xo[0]), ref_x, atol=1e-4)
    assert np.mean(_np(yo[0]) != ref_y) < 0.005
    assert set(np.unique(_np(yo))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("device", DEVICES)
def test_margin_crop_equals_monai_on_the_larger_patch(patch, device):
    # The loader's larger patch: the affine of the margin patch, centre-cropped.
    x, y = patch
    m = 4
    big_x = np.pad(x, [(0, 0)] + [(m, m)] * 3, mode="reflect")
    big_y = np.pad(y, [(0, 0)] + [(m, m)] * 3)
    draw = DRAWS[2]
    xo, yo = spatial(_t(big_x[None], device), _t(big_y[None], device), [draw], [N] * 3)
    ref_x, ref_y = _monai_affine(big_x, big_y, draw)
    crop = (slice(None),) + (slice(m, m + N),) * 3
    np.testing.assert_allclose(_np(xo[0]), ref_x[crop], atol=1e-4)
    assert np.mean(_np(yo[0]) != ref_y[crop]) < 0.005
    # no affine: the crop is the inner patch exactly
    xo, yo = spatial(_t(big_x[None], device), _t(big_y[None], device), [_none()], [N] * 3)
    np.testing.assert_array_equal(_np(xo[0]), big_x[crop])


def test_affine_margin():
    assert affine_margin(AugmentConfig(rotate_prob=0, scale_prob=0), [64] * 3) == [0, 0, 0]
    assert affine_margin(AugmentConfig(enabled=False), [64] * 3) == [0, 0, 0]
    m = affine_margin(AugmentConfig(rotate_range_deg=30, scale_range=0.15), [128] * 3)
    # 128 (cos 30 + sin 30) * 1.15 = 201 → 37 a side, on every axis
    assert m == [37, 37, 37]


@pytest.mark.parametrize("device", DEVICES)
def test_bias_field_equals_monai(patch, device):
    x, y = patch
    coeffs = tuple(np.random.default_rng(1).uniform(-0.3, 0.3, 20))
    field = bias_field([coeffs], 3, [N] * 3, device)
    t = T.RandBiasField(degree=3, coeff_range=(-0.3, 0.3), prob=1.0)
    t._do_transform, t._coeff = True, list(coeffs)  # MONAI's drawn parameters, set
    ref = _np(t(np.ones((1, N, N, N), np.float32), randomize=False))[0]
    np.testing.assert_allclose(_np(field[0]), ref, rtol=1e-4)
    # in the magnitude domain of the brain, as MagnitudeDomaind does it
    img, mask = _t(x[None, :4], device), _t(x[None, 4:], device)
    out = img.clone()
    _magnitude(out[0], brain_of(img, mask)[0], lambda m: m * field)
    ref_field = ref[None].astype(np.float32)
    wrapped = MagnitudeDomaind(T.Lambdad("image", lambda m: m * ref_field))
    want = wrapped({"image": x[:4], "mask": x[4:]})["image"]
    np.testing.assert_allclose(_np(out[0]), want, atol=1e-4)
    # and through the batch transform, from a draw
    aug = BatchAugment(AugmentConfig(), [N] * 3)
    x_aug, _ = aug(_t(x[None], device), _t(y[None], device), [0], draws=[_none(bias_coeffs=coeffs)])
    np.testing.assert_allclose(_np(x_aug[0, :4]), want, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_blur_equals_monai(patch, device):
    x, _ = patch
    sigma = (0.6, 0.9, 1.3)
    out = blur(_t(x[:4], device), sigma)
    ref = T.GaussianSmooth(sigma=sigma)(x[:4])
    np.testing.assert_allclose(_np(out), _np(ref), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_intensity_scales_equal_monai(patch, device):
    x, y = patch
    f = (0.1, -0.2, 0.05, 0.3)
    aug = BatchAugment(AugmentConfig(), [N] * 3)

    def contrast(factor):
        return T.ScaleIntensityFixedMean(factor=factor, preserve_range=True)

    cases = [
        (_none(brightness=0.2), T.ScaleIntensity(minv=None, maxv=None, factor=0.2)(x[:4])),
        (_none(channel_scale=f), np.stack([x[c] * (1 + f[c]) for c in range(4)])),
        (_none(intensity_scale=f), np.stack([x[c] * (1 + f[c]) for c in range(4)])),
        (_none(intensity_shift=f), np.stack([T.ShiftIntensity(f[c])(x[c]) for c in range(4)])),
        (_none(contrast=f), np.concatenate([_np(contrast(f[c])(x[c : c + 1])) for c in range(4)])),
        (_none(gamma=1.3), T.AdjustContrast(1.3, retain_stats=True)(torch.as_tensor(x[:4]))),
        (
            _none(gamma_invert=0.8),
            T.AdjustContrast(0.8, invert_image=True, retain_stats=True)(torch.as_tensor(x[:4])),
        ),
    ]
    for draw, ref in cases:
        out, _ = aug(_t(x[None], device), _t(y[None], device), [0], draws=[draw])
        np.testing.assert_allclose(_np(out[0, :4]), _np(ref), atol=1e-4, err_msg=str(draw))
        np.testing.assert_array_equal(_np(out[0, 4]), x[4])  # the mask untouched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axes", ["one", "all"])
def test_low_resolution_equals_monai(patch, device, axes):
    x, _ = patch
    if axes == "one":
        t = RandThickSlicesd("image", prob=1.0, zoom_range=(0.4, 0.4))
        t.set_random_state(3)
        ref = _np(t({"image": x[:4]})["image"])
        axis = t._axis
    else:
        ref = _np(T.RandSimulateLowResolution(prob=1.0, zoom_range=(0.4, 0.4))(x[:4]))
        axis = -1
    out = low_resolution(_t(x[:4], device), axis, 0.4)
    np.testing.assert_allclose(_np(out), ref, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_histogram_shift_equals_monai(patch, device):
    x, _ = patch
    curves = tuple(
        tuple(np.sort(np.random.default_rng(c).uniform(0, 1, 5)).tolist()) for c in range(4)
    )
    curves = tuple((0.0, *c[1:4], 1.0) for c in curves)
    img = _t(x[:4], device).clone()
    histogram_shift(img, _t(x[4] > 0.5, device), curves)
    brain = x[4] > 0.5
    for c, curve in enumerate(curves):
        t = T.RandHistogramShift(num_control_points=5, prob=1.0)
        t._do_transform = True
        t.reference_control_points = np.linspace(0, 1, 5)
        t.floating_control_points = np.asarray(curve)
        want = x[c].copy()
        want[brain] = _np(t(torch.as_tensor(x[c][brain]), randomize=False))
        np.testing.assert_allclose(_np(img[c]), want, atol=1e-5)


def _residual_stats(fn, x, n=6):
    """Mean and std of ``fn(x) - x`` over the brain, over ``n`` draws."""
    brain = x[4] > 0.5
    res = [(_np(fn(i))[:4] - x[:4])[:, brain] for i in range(n)]
    r = np.concatenate(res, axis=None)
    return r.mean(), r.std()


@pytest.mark.parametrize("device", DEVICES)
def test_noise_distributions_match_monai(patch, device):
    # Gaussian noise of std 0.1 and Rician noise of std 0.1: MONAI's fields come from numpy's
    # generator, ours from torch's; the residuals' mean and std agree within 3 %.
    x, y = patch
    aug = BatchAugment(AugmentConfig(), [N] * 3)

    def ours(draw):
        return lambda i: aug(
            _t(x[None], device), _t(y[None], device), [0], draws=[dataclasses.replace(draw, seed=i)]
        )[0][0]

    gauss = T.RandGaussianNoise(prob=1.0, std=0.1, sample_std=False)
    rician = MagnitudeDomaind(
        T.RandRicianNoised("image", prob=1.0, std=0.1, channel_wise=True, sample_std=False)
    )

    def theirs_rician(i):
        rician.set_random_state(i)
        return np.concatenate([rician({"image": x[:4], "mask": x[4:]})["image"], x[4:]])

    def theirs_gauss(i):
        gauss.set_random_state(i)
        return np.concatenate([_np(gauss(x[:4])), x[4:]])

    for draw, ref in (
        (_none(noise_std=0.1), theirs_gauss),
        (_none(rician_std=(0.1,) * 4), theirs_rician),
    ):
        m1, s1 = _residual_stats(ours(draw), x)
        m2, s2 = _residual_stats(ref, x)
        assert abs(m1 - m2) < 0.03 * s2 + 2e-3 and abs(s1 - s2) < 0.03 * s2, (draw, m1, m2, s1, s2)


def test_draw_probabilities_and_ranges():
    # Each transform fires with its configured probability (independent draws per patch;
    # rotation and scaling independently, as the MONAI path's OneOf weights make them), and
    # parameters stay in MONAI's ranges.
    cfg = AugmentConfig(
        rotate_prob=0.3, scale_prob=0.4, bias_field_prob=0.3, lowres_prob=0.25, gamma_prob=0.3
    )
    draws = [draw_sample(cfg, s, 4) for s in range(3000)]
    tol = 4 * np.sqrt(0.25 / len(draws))
    rot = np.array([d.rotate is not None for d in draws])
    sc = np.array([d.scale is not None for d in draws])
    assert abs(rot.mean() - 0.3) < tol and abs(sc.mean() - 0.4) < tol
    assert abs((rot & sc).mean() - 0.12) < tol
    assert abs(np.mean([d.flips[1] for d in draws]) - 0.5) < tol
    assert abs(np.mean([d.bias_coeffs is not None for d in draws]) - 0.3) < tol
    angles = np.array([d.rotate for d in draws if d.rotate])
    assert np.abs(angles).max() <= np.radians(30) and angles.std() > 0.25
    scales = np.array([d.scale for d in draws if d.scale])
    assert scales.min() >= 0.85 and scales.max() <= 1.15
    gammas = [d.gamma for d in draws if d.gamma is not None]
    assert min(gammas) >= 0.7 and max(gammas) <= 1.5
    assert draw_sample(cfg, 5, 4) == draw_sample(cfg, 5, 4)  # reproducible per seed


@pytest.mark.parametrize("device", DEVICES)
def test_lesion_contrast_equals_monai(patch, device):
    # The torch version draws its factors from the same random state as the CPU class.
    from bratslab.data.augment import _lesion_contrast
    from bratslab.data.augment_batched import lesion_contrast

    x, y = patch
    cfg = AugmentConfig(lesion_contrast_prob=1.0, lesion_contrast_range=(0.3, 1.5))
    t = _lesion_contrast(cfg)
    t.set_random_state(seed=5)
    want = t({"image": x[:4], "mask": x[4:], "label": y.astype(np.float32)})["image"]
    rng = np.random.RandomState(5)
    rng.rand()
    img = _t(x[:4], device).clone()
    lesion_contrast(img, _t(y[0], device), _t(x[4] > 0.5, device), cfg, rng)
    assert not np.allclose(want, x[:4])
    np.testing.assert_allclose(_np(img), want, atol=1e-5)
