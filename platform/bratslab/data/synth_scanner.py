"""The scanner shift of synthetic cases (``shift="mild"|"strong"``, BraTS-Africa-like): per-case
gain, a strong coil bias field, Rician noise (low SNR) and thick slices over the clean phantom
of :mod:`bratslab.data.synth`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from bratslab.data.layout import MODALITIES
from bratslab.data.synth_tissue import ED, ET, wave

Shift = Literal["none", "mild", "strong"]


@dataclass(frozen=True)
class ShiftProfile:
    """A BraTS-Africa-like scanner and protocol shift, relative to the clean phantom."""

    gain: tuple[float, float]  # per-case scanner gain (all modalities), log-uniform range
    gain_spread: float  # per-modality gain, log-uniform in exp(± this)
    bias: float  # amplitude of the shared coil bias field (log units, per axis)
    rician: float  # Rician noise sigma relative to the modality's scale
    slice_mm: float  # acquired slice thickness along one random axis (mm)
    texture: float  # relative amplitude of the texture inside tumours
    enhancement: float  # fraction of ET's T1c enhancement (over oedema) that is left
    satellites: tuple[int, int]  # number of small satellite lesions, inclusive range


SHIFTS: dict[str, ShiftProfile] = {
    "mild": ShiftProfile(
        gain=(0.6, 1.7),
        gain_spread=0.15,
        bias=0.12,
        rician=0.05,
        slice_mm=2.0,
        texture=0.08,
        enhancement=0.7,
        satellites=(0, 2),
    ),
    "strong": ShiftProfile(
        gain=(0.25, 4.0),
        gain_spread=0.3,
        bias=0.25,
        rician=0.12,
        slice_mm=3.0,
        texture=0.15,
        enhancement=0.4,
        satellites=(2, 4),
    ),
}


@dataclass(frozen=True)
class ShiftDraw:
    """One case's draw of a ``ShiftProfile``: the thick-slice axis (0=x), the scanner gain, the
    per-modality gains and tumour-texture amplitudes (MODALITIES order), the satellite count."""

    profile: ShiftProfile
    axis: int
    gain: float
    modality_gain: tuple[float, ...]
    texture_amp: tuple[float, ...]
    satellites: int


def shift_rng(seed: int | Sequence[int]) -> np.random.Generator:
    """The shift's own stream, independent of the phantom's (a child of the same seed)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])


def draw_shift(rng: np.random.Generator, profile: ShiftProfile) -> ShiftDraw:
    lo, hi = np.log(profile.gain)
    n = len(MODALITIES)
    return ShiftDraw(
        profile=profile,
        axis=int(rng.integers(3)),
        gain=float(np.exp(rng.uniform(lo, hi))),
        modality_gain=tuple(np.exp(rng.uniform(-1, 1, n) * profile.gain_spread).tolist()),
        texture_amp=tuple((rng.uniform(0.5, 1.0, n) * profile.texture).tolist()),
        satellites=int(rng.integers(profile.satellites[0], profile.satellites[1] + 1)),
    )


def check_shift(shift: str) -> None:
    if shift != "none" and shift not in SHIFTS:
        raise ValueError(
            f"shift must be one of ['none', {', '.join(map(repr, SHIFTS))}], not {shift!r}"
        )


def shift_draw(seed: int | Sequence[int], shift: Shift) -> ShiftDraw | None:
    """What ``synthesize_case(seed, ..., shift=shift)`` draws for its shift (None for "none")."""
    check_shift(shift)
    return None if shift == "none" else draw_shift(shift_rng(seed), SHIFTS[shift])


def noise_views(field: np.ndarray) -> list[np.ndarray]:
    """Four voxel-wise uncorrelated views of one Gaussian field (flips and shifts of it): drawing
    normals is the slowest step of the phantom."""
    nz, ny, nx = field.shape
    return [
        field,
        field[::-1, ::-1, ::-1],
        np.roll(field, (0, ny // 2, nx // 3), axis=(0, 1, 2)),
        np.roll(field[::-1], (nz // 2, ny // 3, 0), axis=(0, 1, 2)),
    ]


def _thick_slices(img: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Slices ``k`` voxels thick along array ``axis`` (each the mean of its ``k`` voxels, as a
    box slice profile), reconstructed to the original grid by linear interpolation between
    slice centres."""
    n = img.shape[axis]
    m = -(-n // k)
    pad = [(0, 0)] * img.ndim
    pad[axis] = (0, m * k - n)
    blocks = np.pad(img, pad, mode="edge")
    shape = list(img.shape)
    shape[axis : axis + 1] = [m, k]
    blocks = blocks.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    pos = (np.arange(n, dtype=np.float32) - (k - 1) / 2) / k  # in units of slices
    i0 = np.clip(np.floor(pos), 0, m - 1).astype(np.intp)
    i1 = np.minimum(i0 + 1, m - 1)
    w = np.clip(pos - i0, 0, 1).astype(np.float32)
    w = w.reshape([-1 if a == axis else 1 for a in range(img.ndim)])
    return np.take(blocks, i0, axis=axis) * (1 - w) + np.take(blocks, i1, axis=axis) * w


class Scanner:
    """Applies one case's ``ShiftDraw`` to the phantom's contrasts (arrays in (Z, Y, X) order,
    the brain's bounding box)."""

    def __init__(self, draw: ShiftDraw, rng: np.random.Generator, tissue, axes, spacing):
        self.draw, self.p = draw, draw.profile
        shape = tissue.shape
        x, y, z = axes
        # Coil bias field shared by all contrasts: smooth, long-period, separable.
        b = self.p.bias
        self.bias = (
            np.exp(b * wave(rng, x, 180, 2))
            * np.exp(b * wave(rng, y, 180, 2))
            * np.exp(b * wave(rng, z, 180, 2))
        )
        # Tumour texture: smoothed white noise (~2 mm grain), unit std inside the tumour; only
        # the tumour's bounding box is filtered.
        self.tumour = tissue >= ED
        self.texture = np.zeros(shape, dtype=np.float32)
        if self.tumour.any():
            sub = ndimage.find_objects(self.tumour.astype(np.int8))[0]
            noise = rng.standard_normal(self.texture[sub].shape, dtype=np.float32)
            tex = ndimage.gaussian_filter(noise, [2.0 / s for s in spacing[::-1]])
            self.texture[sub] = tex / max(float(tex[self.tumour[sub]].std()), 1e-6)
        self.n1 = noise_views(rng.standard_normal(shape, dtype=np.float32))
        self.n2 = noise_views(rng.standard_normal(shape, dtype=np.float32))
        self.k = max(1, round(self.p.slice_mm / spacing[draw.axis]))

    def levels(self, m: str, levels: tuple[float, ...]) -> tuple[float, ...]:
        """Dim enhancement: ET keeps only part of its T1c excess over oedema."""
        if m != "t1c":
            return levels
        out = list(levels)
        out[ET] = levels[ED] + (levels[ET] - levels[ED]) * self.p.enhancement
        return tuple(out)

    def texture_factor(self, i: int) -> np.ndarray:
        amp = np.float32(self.draw.texture_amp[i])
        return np.where(self.tumour, 1 + amp * self.texture, np.float32(1)).astype(np.float32)

    def acquire(self, i: int, img: np.ndarray, gain: float) -> np.ndarray:
        """Coil bias, Rician noise (magnitude of complex Gaussian noise), thick slices along the
        drawn axis, then the scanner's gain."""
        img = img * self.bias
        s = np.float32(self.p.rician * gain)
        img = np.sqrt((img + s * self.n1[i]) ** 2 + (s * self.n2[i]) ** 2)
        if self.k > 1:
            img = _thick_slices(img, 2 - self.draw.axis, self.k)
        img *= np.float32(self.draw.gain * self.draw.modality_gain[i])
        return np.minimum(img, np.float32(np.iinfo(np.int16).max), out=img)
