"""The parameters of one patch's augmentation (``data.augment.on: device``), drawn on the host.

:func:`draw_sample` draws, from one seed, everything the recipe of
:class:`~bratslab.data.config.AugmentConfig` decides per patch: which transforms fire (each
with its own probability, as the MONAI pipeline of :mod:`bratslab.data.augment` does) and their
parameters, from the same ranges and distributions as the MONAI ``Rand*`` transforms draw them
(MONAI's own random stream cannot be replayed in torch, so the values differ per seed but not
in distribution). :mod:`bratslab.data.augment_batched` then applies a batch of draws on the
training device. :func:`affine_margin` says how much larger the loader must cut a patch so the
rotation and scaling resample real voxels instead of zeros (nnU-Net's larger initial crop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bratslab.data.augment_config import AugmentConfig

Vec = tuple[float, ...]


@dataclass(frozen=True)
class SampleDraw:
    """One patch's draw; ``None`` means that transform does not fire. Per-modality values
    have one entry per image channel (``C`` modalities, never the mask)."""

    flips: tuple[bool, bool, bool]
    rotate: Vec | None  # radians about each axis (MONAI RandAffine's rotate_params)
    scale: Vec | None  # 1 + uniform(-s, s) per axis (RandAffine's scale_params)
    lesion_paste: bool
    lesion_contrast: bool
    bias_coeffs: Vec | None  # Legendre coefficients of the log field (RandBiasField)
    rician_std: Vec | None  # per modality (RandRicianNoise, channel_wise, sample_std)
    noise_std: float | None  # one std for all modalities (RandGaussianNoise)
    blur_sigma: Vec | None  # per axis, voxels (RandGaussianSmooth)
    brightness: float | None  # factor - 1 (RandScaleIntensity)
    channel_scale: Vec | None  # per modality factor - 1
    intensity_scale: Vec | None  # per modality factor - 1 (intensity_prob)
    intensity_shift: Vec | None  # per modality offset (intensity_prob)
    contrast: Vec | None  # per modality factor - 1 (RandScaleIntensityFixedMean)
    lowres: tuple[int, float] | None  # (axis, or -1 for all axes; zoom factor)
    histogram: tuple[Vec, ...] | None  # per modality floating control points on [0, 1]
    gamma_invert: float | None
    gamma: float | None
    seed: int  # noise fields and the lesion transforms (CPU) draw from this

    @property
    def affine(self) -> bool:
        return self.rotate is not None or self.scale is not None


def _fire(rng: np.random.Generator, prob: float) -> bool:
    return prob > 0 and bool(rng.random() < prob)


def _curve(rng: np.random.Generator, points: tuple[int, int]) -> Vec:
    """RandHistogramShift's control points: ``n`` evenly spaced on [0, 1], each inner one moved
    uniformly between its left neighbour (already moved) and its right one (not yet)."""
    n = int(rng.integers(points[0], points[1] + 1))
    f = np.linspace(0.0, 1.0, n)
    for i in range(1, n - 1):
        f[i] = rng.uniform(f[i - 1], f[i + 1])
    return tuple(float(v) for v in f)


def bias_coeff_count(degree: int) -> int:
    """Coefficients of a 3-D Legendre field of ``degree`` (as RandBiasField counts them)."""
    return int(np.prod([(degree + k) / k for k in range(1, 4)]))


def _vec(values) -> Vec:
    return tuple(float(v) for v in values)


def draw_sample(cfg: AugmentConfig, seed: int, channels: int) -> SampleDraw:
    """Everything one patch's augmentation decides, from ``seed`` (deterministic)."""
    r = np.random.default_rng(int(seed) % 2**63)
    flips = tuple(_fire(r, cfg.flip_prob) for _ in range(3))
    rot = math.radians(cfg.rotate_range_deg)
    rotate = _vec(r.uniform(-rot, rot, 3)) if rot > 0 and _fire(r, cfg.rotate_prob) else None
    s = cfg.scale_range
    scale = _vec(1 + r.uniform(-s, s, 3)) if s > 0 and _fire(r, cfg.scale_prob) else None
    paste, lesion_contrast = _fire(r, cfg.lesion_paste_prob), _fire(r, cfg.lesion_contrast_prob)
    c = cfg.bias_field_coeff
    n_coeff = bias_coeff_count(cfg.bias_field_degree)
    bias = _vec(r.uniform(-c, c, n_coeff)) if _fire(r, cfg.bias_field_prob) else None
    rician = _vec(r.uniform(0, cfg.rician_std, channels)) if _fire(r, cfg.rician_prob) else None
    noise = float(r.uniform(0, cfg.noise_std)) if _fire(r, cfg.noise_prob) else None
    blur = _vec(r.uniform(*cfg.blur_sigma, 3)) if _fire(r, cfg.blur_prob) else None
    b = cfg.brightness_range
    brightness = float(r.uniform(-b, b)) if _fire(r, cfg.brightness_prob) else None
    cs = cfg.channel_scale_range
    ch_scale = _vec(r.uniform(-cs, cs, channels)) if _fire(r, cfg.channel_scale_prob) else None
    i_scale = _vec(r.uniform(-0.25, 0.25, channels)) if _fire(r, cfg.intensity_prob) else None
    i_shift = _vec(r.uniform(-0.1, 0.1, channels)) if _fire(r, cfg.intensity_prob) else None
    k = cfg.contrast_range
    contrast = _vec(r.uniform(-k, k, channels)) if _fire(r, cfg.contrast_prob) else None
    lowres = None
    if _fire(r, cfg.lowres_prob):
        axis = int(r.integers(3)) if cfg.lowres_axes == "one" else -1
        lowres = (axis, float(r.uniform(*cfg.lowres_zoom)))
    histogram = None
    if _fire(r, cfg.histogram_shift_prob):
        histogram = tuple(_curve(r, cfg.histogram_shift_points) for _ in range(channels))
    g = cfg.gamma_range
    gamma_invert = float(r.uniform(*g)) if _fire(r, cfg.gamma_invert_prob) else None
    gamma = float(r.uniform(*g)) if _fire(r, cfg.gamma_prob) else None
    return SampleDraw(
        flips=flips,  # type: ignore[arg-type]
        rotate=rotate,
        scale=scale,
        lesion_paste=paste,
        lesion_contrast=lesion_contrast,
        bias_coeffs=bias,
        rician_std=rician,
        noise_std=noise,
        blur_sigma=blur,
        brightness=brightness,
        channel_scale=ch_scale,
        intensity_scale=i_scale,
        intensity_shift=i_shift,
        contrast=contrast,
        lowres=lowres,
        histogram=histogram,
        gamma_invert=gamma_invert,
        gamma=gamma,
        seed=int(r.integers(2**32)),
    )


def affine_matrix(d: SampleDraw) -> np.ndarray:
    """``(3, 3)``: output voxel (centred) → input voxel of one draw: flip ∘ rotate ∘ scale
    (MONAI's AffineGrid product rotate @ scale, after RandFlipd's flips)."""
    from monai.transforms.utils import create_rotate, create_scale

    a = np.diag([-1.0 if f else 1.0 for f in d.flips] + [1.0])
    if d.rotate is not None:
        a = a @ create_rotate(3, d.rotate, backend="numpy")
    if d.scale is not None:
        a = a @ create_scale(3, d.scale, backend="numpy")
    return a[:3, :3]


def needed_margin(d: SampleDraw, patch, most: Sequence[int]) -> list[int]:
    """Voxels per side the loader must read around ``patch`` for this draw: 0 without
    rotation or scaling, else the input box its resampling reads (the patch's corners mapped
    by :func:`affine_matrix`, one more voxel for the interpolation), at most ``most``."""
    if not d.affine:
        return [0, 0, 0]
    half = np.abs(affine_matrix(d)) @ (np.asarray(patch, dtype=float) / 2)
    need = np.ceil(half - np.asarray(patch) / 2) + 1
    return [int(min(max(n, 0), m)) for n, m in zip(need, most, strict=True)]


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def affine_margin(cfg: AugmentConfig, patch) -> list[int]:
    """Voxels to add on each side of each axis of the loader's patch so that rotation and
    scaling sample real voxels (0 where the recipe neither rotates nor scales).

    nnU-Net's rule (``get_patch_size``): the patch's corner vector rotated by the largest angle
    about each axis in turn, the largest extent per axis, times the largest scale factor
    (here scaling multiplies input coordinates). Rarer, larger combined rotations reach past
    it at the corners, where they read zeros, as every rotation does with ``on: loader``."""
    p = np.asarray(patch, dtype=float)
    rot = math.radians(cfg.rotate_range_deg) if cfg.rotate_prob > 0 else 0.0
    grow = 1 + cfg.scale_range if cfg.scale_prob > 0 else 1.0
    if not cfg.enabled or (rot == 0 and grow == 1.0):
        return [0, 0, 0]
    extent = p.copy()
    for axis in range(3):
        extent = np.maximum(extent, np.abs(_rotation(axis, rot)) @ p)
    extent *= grow
    return [int(math.ceil((e - n) / 2)) for e, n in zip(extent, p, strict=True)]
