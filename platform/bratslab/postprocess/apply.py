"""Apply :class:`~bratslab.postprocess.config.PostprocessConfig` to a label map.

Labels are BraTS labels in either convention (0 background, 1 NCR, 2 ED, ET = ``et_label``:
3 in the store and BraTS 2023+, 4 in BraTS 2021). Regions are the nested BraTS regions
(WT = {1, 2, ET}, TC = {1, ET}, ET = {ET}). Components use 26-connectivity, as the lesion-wise
metric does (:mod:`bratslab.evaluate.lesionwise`).

The components of a case are computed once (:func:`region_components`) and reused: the fit
tries many thresholds on the same components (:func:`apply_components`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bratslab.data.labels import REGIONS, STORE_ET
from bratslab.data.profiles import get_profile
from bratslab.postprocess.config import PostprocessConfig

NCR = 1
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RegionComponents:
    """Connected components of one region, smallest first.

    ``sizes``: ``(N,)`` voxel counts, ascending; ``voxels[i]``: flat indices (into the label
    map's C-order ravel) of component ``i``.
    """

    sizes: np.ndarray
    voxels: tuple[np.ndarray, ...]

    def count_below(self, size: int) -> int:
        """How many components have fewer than ``size`` voxels (they are the first ones)."""
        return int(np.searchsorted(self.sizes, size, side="left"))

    def first(self, n: int) -> np.ndarray:
        """Flat indices of the ``n`` smallest components, as one array."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.voxels[:n])


def region_masks(labels: np.ndarray, et_label: int = STORE_ET) -> dict[str, np.ndarray]:
    """``{"wt", "tc", "et"}`` → bool ``(X, Y, Z)`` masks of a label map ``(X, Y, Z)``."""
    return {
        "wt": labels > 0,
        "tc": (labels == NCR) | (labels == et_label),
        "et": labels == et_label,
    }


def components(mask: np.ndarray) -> RegionComponents:
    """26-connected components of a bool mask ``(X, Y, Z)``, smallest first (ties: label order)."""
    cc, n = ndimage.label(mask, structure=CONNECTIVITY_26)
    if n == 0:
        return RegionComponents(np.zeros(0, dtype=np.int64), ())
    flat = cc.ravel()
    fg = np.flatnonzero(flat)
    ids = flat[fg]
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=n + 1)[1:]
    groups = np.split(fg[order], np.cumsum(counts)[:-1])
    by_size = np.argsort(counts, kind="stable")
    return RegionComponents(counts[by_size].astype(np.int64), tuple(groups[i] for i in by_size))


def region_components(labels: np.ndarray, et_label: int = STORE_ET) -> dict[str, RegionComponents]:
    """:func:`components` of each region (:data:`REGIONS`) of a label map ``(X, Y, Z)``."""
    masks = region_masks(labels, et_label)
    return {r: components(masks[r]) for r in REGIONS}


def removal_counts(comps: dict[str, RegionComponents], cfg: PostprocessConfig) -> tuple[int, ...]:
    """``(deleted WT, deleted TC, deleted ET, ET→NCR up to)`` component counts of ``cfg``.

    Two configs with the same counts give the same label map: the fit's cache key.
    """
    return (
        comps["wt"].count_below(cfg.min_size_wt),
        comps["tc"].count_below(cfg.min_size_tc),
        comps["et"].count_below(cfg.min_size_et),
        comps["et"].count_below(cfg.et_to_ncr_below),
    )


def apply_counts(labels: np.ndarray, comps: dict[str, RegionComponents], counts) -> np.ndarray:
    """Label map ``(X, Y, Z)`` with the components named by :func:`removal_counts` changed.

    ET components from the deleted ones up to ``counts[3]`` become NCR; then the deleted
    components of every region become background (so a deletion wins over a relabelling).
    """
    del_wt, del_tc, del_et, ncr_upto = counts
    out = labels.copy()
    flat = out.reshape(-1)  # a view: writes land in ``out``
    if ncr_upto > del_et:
        flat[np.concatenate(comps["et"].voxels[del_et:ncr_upto])] = NCR
    for region, n in (("wt", del_wt), ("tc", del_tc), ("et", del_et)):
        if n:
            flat[comps[region].first(n)] = 0
    return out


def apply_components(
    labels: np.ndarray, comps: dict[str, RegionComponents], cfg: PostprocessConfig
) -> np.ndarray:
    """:func:`postprocess_labels` with the components of ``labels`` already computed."""
    return apply_counts(labels, comps, removal_counts(comps, cfg))


def profile_components(labels: np.ndarray, profile: str) -> dict[str, RegionComponents]:
    """:func:`components` of each region of ``profile`` (its report order) of a label map
    ``(X, Y, Z)`` in the profile's source convention."""
    regions = get_profile(profile).regions
    return {r: components(np.isin(labels, members)) for r, members in regions.items()}


def profile_removal_counts(
    comps: dict[str, RegionComponents], cfg: PostprocessConfig
) -> tuple[int, ...]:
    """Deleted components per region of a profile's ``cfg.min_size`` (the fit's cache key)."""
    return tuple(c.count_below(cfg.min_size.get(r, 0)) for r, c in comps.items())


def apply_profile_counts(
    labels: np.ndarray, comps: dict[str, RegionComponents], counts: tuple[int, ...]
) -> np.ndarray:
    """Label map ``(X, Y, Z)`` with the ``counts[i]`` smallest components of region ``i`` of
    ``comps`` made background."""
    out = labels.copy()
    flat = out.reshape(-1)  # a view: writes land in ``out``
    for comp, n in zip(comps.values(), counts, strict=True):
        if n:
            flat[comp.first(n)] = 0
    return out


def postprocess_labels(
    labels: np.ndarray, cfg: PostprocessConfig, et_label: int = STORE_ET
) -> np.ndarray:
    """Apply ``cfg`` to a label map ``(X, Y, Z)`` (ET = ``et_label``; with ``cfg.profile``, in
    that profile's convention); a new array of the same dtype. A no-op config returns an
    unchanged copy without labelling anything."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"post-processing expects a label map (X, Y, Z), got {labels.shape}")
    if cfg.is_noop:
        return labels.copy()
    if cfg.profile is not None:
        comps = profile_components(labels, cfg.profile)
        return apply_profile_counts(labels, comps, profile_removal_counts(comps, cfg))
    return apply_components(labels, region_components(labels, et_label), cfg)


def infer_et_label(labels: np.ndarray) -> int:
    """4 when the map holds label 4 (BraTS 2021), else 3 (a map without ET reads either way)."""
    return 4 if np.any(labels == 4) else STORE_ET


__all__ = [
    "RegionComponents",
    "apply_components",
    "apply_counts",
    "apply_profile_counts",
    "components",
    "infer_et_label",
    "postprocess_labels",
    "profile_components",
    "profile_removal_counts",
    "region_components",
    "region_masks",
    "removal_counts",
]
