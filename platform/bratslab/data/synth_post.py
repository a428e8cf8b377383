"""Synthetic post-treatment glioma cases (BraTS 2024+ GLI): the phantom of
:mod:`bratslab.data.synth` plus a resection cavity (RC, label 4).

A resection cavity is fluid: dark in T1, T1c and FLAIR, bright in T2. Here it is an ellipsoid
inside the brain beside the tumour, replacing healthy tissue only, so the tumour labels
(NETC 1, SNFH 2, ET 3) stay as synthesised and RC lies outside WT, as in the real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bratslab.data.synth import synthesize_case, write_case
from bratslab.data.synth_scanner import Shift

RC_LABEL = 4


def add_resection_cavity(
    images: dict[str, np.ndarray], seg: np.ndarray, seed: int | Sequence[int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A copy of ``images`` (t1n, t1c, t2w, t2f ``(X, Y, Z)``) and ``seg`` with a cavity.

    The cavity (radius ~ 7 % of the field of view per axis) is centred beside the tumour
    (or at the brain's centre without one), clipped to the brain and kept off the tumour.
    """
    rng = np.random.default_rng(seed)
    brain = images["t1n"] > 0
    shape = np.array(seg.shape)
    where = np.argwhere(seg > 0) if seg.any() else np.argwhere(brain)
    lo, hi = where.min(axis=0), where.max(axis=0)
    centre = (lo + hi) / 2.0
    radii = np.maximum(shape * rng.uniform(0.05, 0.09, size=3), 2.0)
    axis = int(rng.integers(0, 3))
    centre[axis] = hi[axis] + radii[axis] * 0.8  # beside the tumour, touching its border
    grid = np.ogrid[tuple(slice(0, int(s)) for s in shape)]

    def ellipsoid(c: np.ndarray) -> np.ndarray:
        dist = sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, radii, strict=True))
        return (dist <= 1.0) & brain & (seg == 0)

    cavity = ellipsoid(centre)
    if not cavity.any():  # the tumour touches the brain's edge there: the other side
        centre[axis] = lo[axis] - radii[axis] * 0.8
        cavity = ellipsoid(centre)
    out_seg = seg.copy()
    out_seg[cavity] = RC_LABEL
    out = {m: img.copy() for m, img in images.items()}
    for m, img in out.items():
        inside = img[brain]
        level = np.percentile(inside, 99 if m == "t2w" else 5) if inside.size else 1
        img[cavity] = max(int(level), 1)  # fluid, never 0 (0 means outside the head)
    return out, out_seg


def synthesize_post_treatment(
    out_dir: str | Path,
    n_cases: int,
    seed: int = 0,
    shape: Sequence[int] = (240, 240, 155),
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    unlabeled: int = 0,
    shift: Shift = "none",
) -> list[Path]:
    """Write ``n_cases`` BraTS 2024-style post-treatment cases (``BraTS-GLI-00000-100``, labels
    NETC 1, SNFH 2, ET 3, RC 4); the last ``unlabeled`` have no seg."""
    if n_cases < 0 or not 0 <= unlabeled <= n_cases:
        raise ValueError("need 0 <= unlabeled <= n_cases")
    folders = []
    for i in range(n_cases):
        images, seg, affine = synthesize_case((seed, i), shape, spacing, 3, shift)
        images, seg = add_resection_cavity(images, seg, (seed, i, RC_LABEL))
        labeled = i < n_cases - unlabeled
        cid = f"BraTS-GLI-{i:05d}-100"  # timepoint 100: a post-treatment scan
        folders.append(
            write_case(out_dir, cid, images, seg if labeled else None, affine, "brats2023")
        )
    return folders
