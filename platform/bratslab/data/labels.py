"""BraTS label conventions and the overlapping regions models are trained on.

Source conventions: BraTS 2021 uses 0 bg, 1 NCR/NET, 2 ED, **4** ET; BraTS 2023+
(GLI, SSA, PED, MEN, MET) uses **3** for ET. The store always holds ET = 3.

Regions (sigmoid per channel, overlapping): WT = {1, 2, ET}, TC = {1, ET}, ET = {ET}.

Models output either region probabilities (``output="regions"``: sigmoid WT/TC/ET) or label
probabilities (``output="labels"``: softmax over store labels 0..3);
:func:`probabilities_to_regions` and :func:`probabilities_to_labels` turn either into regions
(for scoring) or labels in a source convention (for writing).
"""

from __future__ import annotations

import numpy as np

REGIONS: tuple[str, ...] = ("wt", "tc", "et")
STORE_ET = 3  # ET label inside the preprocessed store, whatever the source convention
# Store labels of the tumour sub-regions, by the names job specs use.
STORE_LABELS: dict[str, int] = {"ncr": 1, "ed": 2, "et": STORE_ET}


def to_store_labels(seg: np.ndarray, et_label: int) -> np.ndarray:
    """Map a source segmentation to store labels {0,1,2,3} (uint8); ``et_label`` is 3 or 4."""
    out = seg.astype(np.uint8, copy=True)
    if et_label != STORE_ET:
        out[seg == et_label] = STORE_ET
    return out


def from_store_labels(labels: np.ndarray, et_label: int) -> np.ndarray:
    """Inverse of :func:`to_store_labels`: store labels back to the source convention (uint8)."""
    out = labels.astype(np.uint8, copy=True)
    if et_label != STORE_ET:
        out[labels == STORE_ET] = et_label
    return out


def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    """Store labels ``(..., X, Y, Z)`` with values {0,1,2,3} → bool regions ``(3, X, Y, Z)``.

    A leading singleton channel (``(1, X, Y, Z)``, the store's ``_y.npy``) is squeezed first.
    Channel order is :data:`REGIONS` (WT, TC, ET).
    """
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    # Not ``labels > 0``: a post-treatment store also holds RC = 4, which lies outside WT.
    wt = (labels > 0) & (labels <= STORE_ET)
    tc = (labels == 1) | (labels == STORE_ET)
    et = labels == STORE_ET
    return np.stack([wt, tc, et])


def regions_to_labels(regions: np.ndarray, et_label: int = STORE_ET) -> np.ndarray:
    """Bool/0-1 regions ``(3, X, Y, Z)`` (WT, TC, ET) → labels ``(X, Y, Z)`` uint8.

    Nested reconstruction as in the BraTS challenge scripts: ET → ``et_label``, TC∖ET → 1,
    WT∖TC → 2. Inconsistent predictions (ET outside TC, TC outside WT) resolve by precedence
    ET > TC > WT, so every predicted ET voxel stays ET.
    """
    wt, tc, et = (np.asarray(r, dtype=bool) for r in regions)
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = et_label
    return out


def probabilities_to_regions(probs: np.ndarray, output: str, threshold: float = 0.5) -> np.ndarray:
    """Model probabilities ``(C, X, Y, Z)`` → bool regions ``(3, X, Y, Z)`` (WT, TC, ET).

    Region models (``output="regions"``, C = 3): ``probs >= threshold``. Label models
    (``output="labels"``, C = 4 store labels): argmax, then :func:`labels_to_regions`.
    """
    if output == "regions":
        return probs >= threshold
    return labels_to_regions(np.argmax(probs, axis=0).astype(np.uint8))


def probabilities_to_labels(
    probs: np.ndarray, output: str, et_label: int, threshold: float = 0.5
) -> np.ndarray:
    """Model probabilities ``(C, X, Y, Z)`` → labels ``(X, Y, Z)`` uint8 in a source convention.

    Region models (``output="regions"``, sigmoid WT/TC/ET): threshold, then nested
    reconstruction (ET → ``et_label``, TC∖ET → 1, WT∖TC → 2). Label models (softmax over store
    labels 0..3): argmax, then ET 3 → ``et_label``.
    """
    if output == "regions":
        return regions_to_labels(probs >= threshold, et_label=et_label)
    return from_store_labels(np.argmax(probs, axis=0).astype(np.uint8), et_label)


def profile_regions(
    labels: np.ndarray, profile, names: tuple[str, ...] | None = None
) -> np.ndarray:
    """Labels ``(X, Y, Z)`` in a profile's source convention → bool ``(R, X, Y, Z)``.

    ``profile``: a :class:`~bratslab.data.profiles.Profile`; ``names``: the regions to build
    (default: the regions its ``rebuild`` paints, i.e. what a region model of the profile
    outputs, e.g. WT, TC, ET, RC for post-treatment glioma).
    """
    names = names or tuple(r for r, _ in profile.rebuild)
    return np.stack([np.isin(labels, profile.regions[r]) for r in names])


def rebuild_profile_labels(regions: np.ndarray, profile) -> np.ndarray:
    """Bool/0-1 ``(R, X, Y, Z)`` in the order of ``profile.rebuild`` → labels ``(X, Y, Z)`` uint8
    in the profile's source convention: each region painted with its label in that order, later
    ones winning (nnU-Net's ``regions_class_order``; for WT/TC/ET: WT∖TC → ED, TC∖ET → NCR,
    ET → ET, as :func:`regions_to_labels`)."""
    if len(regions) != len(profile.rebuild):
        raise ValueError(
            f"{profile.name}: expected {len(profile.rebuild)} regions "
            f"({', '.join(r for r, _ in profile.rebuild)}), got {len(regions)}"
        )
    out = np.zeros(np.shape(regions[0]), dtype=np.uint8)
    for mask, (_, label) in zip(regions, profile.rebuild, strict=True):
        out[np.asarray(mask, dtype=bool)] = label
    return out
