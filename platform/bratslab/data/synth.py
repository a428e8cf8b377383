"""Synthetic BraTS cases: a skull-stripped brain phantom with nested tumours, written as NIfTI.

The phantom is built from separable 1-D functions broadcast over the grid (no per-voxel Python,
no full-volume filtering), so a 240x240x155 case takes a fraction of a second to generate:

* brain: an ellipsoid with a bumpy surface; cortex (GM) as an outer shell with a gyral pattern,
  white matter inside, CSF in two lateral ventricles, the midline fissure and sulci;
* tumours (1-3 lesions): necrotic core (NCR, label 1) inside an enhancing rim (ET, label 3 or
  4) inside oedema (ED, label 2); about one case in five has no enhancing tumour;
* four contrasts with plausible relative intensities (T1: WM > GM > CSF; T1c: bright ET rim;
  T2: CSF and oedema bright; FLAIR: CSF dark, oedema bright), a smooth bias field per modality,
  per-case scanner gain, Gaussian noise; int16, background exactly 0;
* a BraTS-like affine (RAS axes flipped in x and y, like the released volumes);
* optionally (``shift="mild"|"strong"``) a BraTS-Africa-like scanner shift on top of the same
  phantom: per-case scanner gain, a strong coil bias field, Rician noise (low SNR), thick
  slices along one random axis reconstructed to the volume's grid, textured tumours, dim
  enhancement and a few small satellite lesions (see ``SHIFTS``).

Deterministic per ``(seed, case index)``; gzip streams carry no timestamp. The shift draws from
its own random stream, so ``shift="none"`` gives exactly the clean phantom, and a shifted case
has the clean case's anatomy, main tumours and noise.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab import atomic
from bratslab.data.layout import ET_LABEL, MODALITIES, Layout, case_file_name
from bratslab.data.synth_scanner import (
    SHIFTS,
    Scanner,
    Shift,
    check_shift,
    draw_shift,
    noise_views,
    shift_rng,
)
from bratslab.data.synth_tissue import BG, CSF, ED, ET, GM, NCR, WM, wave

try:  # ISA-L's deflate is ~8x faster than zlib's at level 1 (optional; same gzip format)
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip


# Relative intensity of each tissue class per modality (bg, WM, GM, CSF, ED, ET, NCR), and the
# modality's typical scale in scanner units.
CONTRAST: dict[str, tuple[tuple[float, ...], float]] = {
    "t1n": ((0.0, 1.00, 0.72, 0.28, 0.62, 0.70, 0.35), 600.0),
    "t1c": ((0.0, 1.00, 0.75, 0.30, 0.66, 1.70, 0.30), 700.0),
    "t2w": ((0.0, 0.55, 0.80, 1.80, 1.35, 1.05, 1.55), 900.0),
    "t2f": ((0.0, 0.70, 0.95, 0.25, 1.60, 1.15, 0.85), 500.0),
}


NOISE = 0.035  # noise sigma relative to the modality scale


def brats_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The released BraTS volumes' orientation: x and y flipped, y origin at the far side."""
    sx, sy, sz = spacing
    return np.array(
        [
            [-sx, 0.0, 0.0, 0.0],
            [0.0, -sy, 0.0, (shape[1] - 1) * sy],
            [0.0, 0.0, sz, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


# Volumes are built in (Z, Y, X) C order, i.e. (X, Y, Z) Fortran order once transposed: that is
# NIfTI's on-disk order, so writing needs no transposing copy.
def _bshape(axis: int) -> list[int]:
    """Broadcast shape of a 1-D coordinate along logical ``axis`` (0=x) in (Z, Y, X) arrays."""
    return [-1 if i == 2 - axis else 1 for i in range(3)]


def _rev_box(lo, hi) -> tuple[slice, ...]:
    """Index of the logical box ``lo:hi`` (x, y, z) in a (Z, Y, X) array."""
    return tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True))


def _axes(shape, spacing, center):
    """Broadcastable mm coordinates x, y, z around ``center`` (for (Z, Y, X) arrays)."""
    return [
        ((np.arange(n, dtype=np.float32) - c) * s).reshape(_bshape(a))
        for a, (n, s, c) in enumerate(zip(shape, spacing, center, strict=True))
    ]


def _lesion(
    rng,
    tissue,
    brain,
    spacing,
    semi,
    brain_centre,
    has_et: bool,
    radius_mm: tuple[float, float] = (7.0, 20.0),
    min_radius_mm: float = 0.0,
) -> None:
    """Paint one lesion (ED shell, ET rim, NCR core) into ``tissue`` in place; its core radius
    is drawn from ``radius_mm`` (for a 240 mm field of view; it scales with the brain), and is
    at least ``min_radius_mm``."""
    shape = tissue.shape[::-1]  # logical (X, Y, Z)
    # Centre inside the inner half of the brain ellipsoid (in units of its semi-axes).
    while True:
        u = rng.uniform(-0.6, 0.6, 3)
        if (u**2).sum() < 0.4:
            break
    centre_mm = u * np.asarray(semi)
    centre = [b + c / s for b, c, s in zip(brain_centre, centre_mm, spacing, strict=True)]
    size = min(semi) / 65.0  # lesion sizes scale with the brain
    r = max(float(rng.uniform(*radius_mm)) * size, min_radius_mm)  # tumour-core radius, mm
    ef = float(rng.uniform(1.4, 2.2))  # oedema extends to ef * r
    ncr_frac = float(rng.uniform(0.35, 0.7))
    # Oedema encloses the core by a margin of at least two voxels (small volumes have small
    # tumours); the box is large enough for the oedema's farthest reach (modulation >= 0.7).
    margin = max(0.3, 2.0 * max(spacing) / r)
    half = [int(np.ceil(r * max(ef / 0.7, (1 + margin) / 0.78) / s)) + 1 for s in spacing]
    lo = [max(0, int(c) - h) for c, h in zip(centre, half, strict=True)]
    hi = [min(n, int(c) + h + 1) for n, c, h in zip(shape, centre, half, strict=True)]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return
    box = _rev_box(lo, hi)
    sub = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
    ax = [
        ((s - c) * sp).astype(np.float32).reshape(_bshape(k))
        for k, (s, c, sp) in enumerate(zip(sub, centre, spacing, strict=True))
    ]
    d = np.sqrt(ax[0] ** 2 + ax[1] ** 2 + ax[2] ** 2) / r
    # Irregular outlines: radius modulated by smooth functions of position (two independent ones
    # for the core and the oedema, so the oedema is not a scaled copy of the core).
    core_mod = 1 + 0.22 / 3 * (wave(rng, ax[0], r) + wave(rng, ax[1], r) + wave(rng, ax[2], r))
    ed_mod = 1 + 0.3 / 3 * (
        wave(rng, ax[0], 1.5 * r) + wave(rng, ax[1], 1.5 * r) + wave(rng, ax[2], 1.5 * r)
    )
    dc = d * core_mod
    t = tissue[box]
    inside = brain[box]
    # Oedema: its own irregular outline, always enclosing a margin around the core.
    t[((d * ed_mod < ef) | (dc < 1 + margin)) & inside & (t < ED)] = ED
    if has_et:
        t[(dc < 1.0) & inside] = ET
        t[(dc < ncr_frac) & inside] = NCR
    else:
        t[(dc < 0.8) & inside] = NCR


def synthesize_case(
    seed: int | Sequence[int],
    shape: Sequence[int] = (240, 240, 155),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    et_label: int = 3,
    shift: Shift = "none",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Generate one case in memory; ``shift`` adds a scanner shift (see ``SHIFTS``).

    Returns:
        ``(images, seg, affine)``: ``images`` maps t1n, t1c, t2w, t2f to ``(X, Y, Z)`` int16
        (0 outside the brain, >= 1 inside); ``seg`` ``(X, Y, Z)`` uint8 with 0 bg, 1 NCR, 2 ED,
        ``et_label`` ET; ``affine`` ``(4, 4)`` float64 (mm).
    """
    check_shift(shift)
    rng = np.random.default_rng(seed)
    full_shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    extent = np.array(full_shape) * np.array(spacing)
    # Semi-axes (mm) of the brain: ~ 70 x 85 x 65 mm in a 240x240x155 field of view. Python
    # floats, so float32 arrays stay float32 (NEP 50).
    semi = [float(v) for v in extent * np.array([0.29, 0.355, 0.42]) * rng.uniform(0.92, 1.05, 3)]
    centre = [n / 2 + rng.uniform(-0.02, 0.02) * n for n in full_shape]
    # Everything outside the brain is 0, so the phantom is built inside the brain's bounding box
    # only (the bumps below stretch the ellipsoid by at most 1/sqrt(0.85) < 1.09).
    lo = [max(0, int(c - 1.09 * a / s)) for c, a, s in zip(centre, semi, spacing, strict=True)]
    hi = [
        min(n, int(np.ceil(c + 1.09 * a / s)) + 1)
        for n, c, a, s in zip(full_shape, centre, semi, spacing, strict=True)
    ]
    shape = tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True))
    axes = _axes(shape, spacing, [c - lo_ for c, lo_ in zip(centre, lo, strict=True)])
    brain, tissue = _anatomy(rng, shape, spacing, semi, axes)

    has_et = rng.random() > 0.2
    n_lesions = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    box_centre = [c - lo_ for c, lo_ in zip(centre, lo, strict=True)]
    for _ in range(n_lesions):
        _lesion(rng, tissue, brain, spacing, semi, box_centre, has_et)
    scanner = None
    if shift != "none":
        srng = shift_rng(seed)
        draw = draw_shift(srng, SHIFTS[shift])
        for _ in range(draw.satellites):  # small lesions, 2.5-5 mm core radius, >= 1.5 voxels
            floor = 1.5 * max(spacing)
            _lesion(srng, tissue, brain, spacing, semi, box_centre, has_et, (2.5, 5.0), floor)
        scanner = Scanner(draw, srng, tissue, axes, spacing)

    box = _rev_box(lo, hi)
    lut = np.zeros(8, dtype=np.uint8)
    lut[[ED, ET, NCR]] = [2, et_label, 1]
    seg = np.zeros(full_shape[::-1], dtype=np.uint8)
    idx = tissue.astype(np.intp)  # one conversion serves five table look-ups
    seg[box] = lut.take(idx)

    images = {}
    contrasts = _contrasts(rng, idx, brain, axes, scanner)
    for m, img in zip(MODALITIES, contrasts, strict=True):
        out = np.zeros(full_shape[::-1], dtype=np.int16)
        out[box] = img
        images[m] = out.T  # (X, Y, Z), Fortran-ordered
    return images, seg.T, brats_affine(full_shape, spacing)


def _anatomy(rng, shape, spacing, semi, axes) -> tuple[np.ndarray, np.ndarray]:
    """``(brain, tissue)`` in the brain's box ((Z, Y, X) order): the brain mask, and tissue
    classes WM, GM (a gyral cortex), CSF (sulci, fissure, ventricles), BG outside the brain."""
    x, y, z = axes
    # Normalised radius with a bumpy surface (separable, so it costs a few broadcasts).
    r2 = (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2
    bumps = 0.05 * (wave(rng, x, 40) + wave(rng, y, 40) + wave(rng, z, 40))
    r2 *= 1 + bumps
    brain = r2 < 1.0
    gyri = wave(rng, x, 9, 2) + wave(rng, y, 9, 2) + wave(rng, z, 9, 2)

    tissue = np.full(shape[::-1], WM, dtype=np.int8)
    tissue[r2 > 0.76 + 0.05 * gyri] = GM  # cortex: a shell with a gyral pattern
    tissue[(r2 > 0.8) & (gyri > 0.55)] = CSF  # sulci
    tissue[(np.abs(x) < 1.2 * spacing[0]) & (r2 > 0.25)] = CSF  # interhemispheric fissure
    for side in (-1, 1):  # lateral ventricles
        vx = (x - side * 0.13 * semi[0]) / (0.07 * semi[0])
        v = vx**2 + ((y + 0.05 * semi[1]) / (0.32 * semi[1])) ** 2 + (z / (0.14 * semi[2])) ** 2
        tissue[v < 1.0] = CSF
    tissue[~brain] = BG
    return brain, tissue


def _contrasts(rng, idx, brain, axes, scanner: Scanner | None) -> list[np.ndarray]:
    """The four contrasts (MODALITIES order) in the brain's box, float32, 0 outside the brain
    and >= 1 inside: tissue levels, a mild bias field, per-modality gain, Gaussian noise, then
    ``scanner``'s shift if any."""
    x, y, z = axes
    # One Gaussian field serves all four modalities through different flips and shifts.
    views = noise_views(rng.standard_normal(idx.shape, dtype=np.float32))
    out = []
    for i, (m, noise) in enumerate(zip(MODALITIES, views, strict=True)):
        levels, scale = CONTRAST[m]
        gain = scale * float(rng.uniform(0.8, 1.25))
        if scanner is not None:
            levels = scanner.levels(m, levels)
        table = np.asarray(levels, dtype=np.float32) * np.float32(gain)
        img = table.take(idx)
        if scanner is not None:
            img *= scanner.texture_factor(i)
        # Smooth multiplicative bias field (separable product, ~ +-10 %).
        img *= (1 + 0.1 * wave(rng, x, 150, 2)) * (1 + 0.1 * wave(rng, y, 150, 2))
        img *= 1 + 0.1 * wave(rng, z, 150, 2)
        img += noise * np.float32(NOISE * gain)
        if scanner is not None:
            img = scanner.acquire(i, img, gain)
        np.maximum(img, 1.0, out=img)  # skull-stripped: every brain voxel is > 0
        img *= brain
        out.append(img)
    return out


def _nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    # mtime=0: identical content gives identical bytes (nibabel does the same).
    return _gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


MAX_CASE_NUMBER = 99_999  # five digits in BraTS case ids


IDS_PER_SEED = 1_000


def default_start_id(seed: int) -> int:
    """The first case number ``bratslab data synth --seed SEED`` writes: ``1000 * SEED`` (seeds
    0-99 with up to 1000 cases each never share an id, so a held-out set synthesised with
    another seed never pairs with training cases of the same name)."""
    return (seed % (MAX_CASE_NUMBER // IDS_PER_SEED + 1)) * IDS_PER_SEED


def case_id_for(index: int, layout: Layout, cohort: str = "GLI") -> str:
    """``BraTS2021_00007`` or ``BraTS-GLI-00007-000``."""
    if layout == "brats2021":
        return f"BraTS2021_{index:05d}"
    return f"BraTS-{cohort}-{index:05d}-000"


def write_case(
    out_dir: str | Path,
    case_id: str,
    images: dict[str, np.ndarray],
    seg: np.ndarray | None,
    affine: np.ndarray,
    layout: Layout,
) -> Path:
    """Write a case folder ``out_dir/case_id/`` in ``layout``'s naming (atomic per file)."""
    folder = Path(out_dir) / case_id
    items = [(m, images[m]) for m in MODALITIES]
    if seg is not None:
        items.append(("seg", seg))
    # zlib releases the GIL: compress the five files concurrently.
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        blobs = list(pool.map(lambda kv: _nifti_gz(kv[1], affine), items))
    for (key, _), blob in zip(items, blobs, strict=True):
        atomic.write_bytes(folder / case_file_name(case_id, key, layout), blob)
    return folder


def synthesize_dataset(
    out_dir: str | Path,
    n_cases: int,
    layout: Layout = "brats2023",
    seed: int = 0,
    shape: Sequence[int] = (240, 240, 155),
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    unlabeled: int = 0,
    cohort: str = "GLI",
    progress: bool = False,
    shift: Shift = "none",
    start_id: int = 0,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases in ``layout``; the last ``unlabeled`` have no seg.
    Case ``i`` is named with the number ``start_id + i`` (``BraTS-GLI-{start_id + i:05d}-000``;
    ``bratslab data synth`` derives it from --seed, :func:`default_start_id`).
    ``shift`` "mild" or "strong" writes a domain-shift set (BraTS-Africa-like scanners, see
    ``SHIFTS``) with the same anatomy and main tumours as "none" (the clean phantom).

    Returns:
        The case folders, in order. Case ``i`` depends only on ``(seed, i)``, ``shape``,
        ``spacing``, the layout's ET label and ``shift``.
    """
    check_shift(shift)
    if layout not in ET_LABEL:
        raise ValueError(f"layout must be one of {sorted(ET_LABEL)}, not {layout!r}")
    if n_cases < 0 or not 0 <= unlabeled <= n_cases:
        raise ValueError("need 0 <= unlabeled <= n_cases")
    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise ValueError(f"shape must be three sizes >= 16, not {list(shape)}")
    if start_id < 0 or start_id + n_cases > MAX_CASE_NUMBER + 1:
        raise ValueError(
            f"case numbers {start_id}..{start_id + n_cases - 1} do not fit 0..{MAX_CASE_NUMBER}"
        )
    folders = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        tid = bar.add_task("synthesise", total=n_cases)
    try:
        for i in range(n_cases):
            images, seg, affine = synthesize_case(
                (seed, i), shape, spacing, ET_LABEL[layout], shift
            )
            labeled = i < n_cases - unlabeled
            cid = case_id_for(start_id + i, layout, cohort)
            folders.append(
                write_case(out_dir, cid, images, seg if labeled else None, affine, layout)
            )
            if bar is not None:
                bar.update(tid, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    return folders
