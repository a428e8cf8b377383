"""BraTS label conventions and the overlapping regions models are trained on.

Source conventions (REFERENCE.md): BraTS 2021 uses 0 bg, 1 NCR/NET, 2 ED, **4** ET; BraTS 2023+
(GLI, SSA, PED, MEN, MET) uses **3** for ET. The store always holds ET = 3.

Regions (sigmoid per channel, overlapping): WT = {1, 2, ET}, TC = {1, ET}, ET = {ET}.
"""

from __future__ import annotations

import numpy as np

REGIONS: tuple[str, ...] = ("wt", "tc", "et")
STORE_ET = 3  # ET label inside the preprocessed store, whatever the source convention


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
    wt = labels > 0
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
