"""A profile's regions in the label space of a preprocessed store: what a model outputs and what
validation and evaluation score.

A region model outputs one sigmoid channel per step of the profile's ``rebuild`` (WT, TC, ET
for BraTS 2021/2023; WT, TC, ET, RC for post-treatment glioma; WT, TC, CC, ET for the 2024+
paediatric task), and a label map is rebuilt from them by painting each region's label in that
order (nnU-Net's ``regions_class_order``). A label model outputs a softmax over the store's
label values. Either way the *scored* regions are all of the profile's regions (six for
post-treatment glioma: ET, NETC, SNFH, RC, TC, WT).

Everything here works on **store** labels: the profile's source labels mapped through its
``store_labels`` (only BraTS 2021 differs: ET 4 → 3). For the 2021/2023 profiles this is
exactly :mod:`bratslab.data.labels`' fixed WT/TC/ET triple, which stays the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bratslab.data.conventions import relabel_values
from bratslab.data.labels import from_store_labels
from bratslab.data.profiles import DEFAULT_PROFILE, Profile, get_profile


@dataclass(frozen=True)
class RegionSet:
    """The regions of ``profile`` in store labels.

    ``outputs``: a region model's channels, in ``rebuild`` order; ``members[i]``: the store
    labels of output ``i``; ``paint[i]``: the store label output ``i`` paints when a label map
    is rebuilt; ``scored``: every region of the profile (report order) → its store labels;
    ``values``: the store's label values, background first (a label model's channels).
    """

    profile: str
    outputs: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    paint: tuple[int, ...]
    scored: Mapping[str, tuple[int, ...]]
    values: tuple[int, ...]

    @property
    def legacy(self) -> bool:
        """The BraTS 2021/2023 triple (WT, TC, ET over store labels 1, 2, 3)."""
        return self.outputs == ("wt", "tc", "et") and tuple(self.scored) == self.outputs

    def channels(self, output: str) -> int:
        """Output channels of a ``"regions"`` or ``"labels"`` model for this profile."""
        return len(self.outputs) if output == "regions" else len(self.values)

    def describe(self, output: str = "regions") -> str:
        """``"4 regions (WT, TC, ET, RC)"`` or ``"5 labels (0, 1, 2, 3, 4)"``."""
        if output == "regions":
            return f"{len(self.outputs)} regions ({', '.join(r.upper() for r in self.outputs)})"
        return f"{len(self.values)} labels ({', '.join(map(str, self.values))})"


def region_set(profile: str | Profile | None = None) -> RegionSet:
    """The :class:`RegionSet` of a profile (name, alias or object; None → the default)."""
    prof = get_profile(profile)

    def store(labels: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted({prof.store_label(v) for v in labels}))

    return RegionSet(
        profile=prof.name,
        outputs=tuple(r for r, _ in prof.rebuild),
        members=tuple(store(prof.regions[r]) for r, _ in prof.rebuild),
        paint=tuple(prof.store_label(v) for _, v in prof.rebuild),
        scored={r: store(v) for r, v in prof.regions.items()},
        values=(0, *sorted({prof.store_label(v) for v in prof.labels})),
    )


def model_region_set(info: Mapping[str, Any]) -> RegionSet:
    """The regions a model was trained on, from its ``model.json`` (models written before
    profiles existed: the BraTS 2023 triple)."""
    return region_set(info.get("profile") or DEFAULT_PROFILE)


def output_masks(labels: np.ndarray, rs: RegionSet) -> np.ndarray:
    """Store labels ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) → bool ``(R, X, Y, Z)``, one channel per
    model output of ``rs`` (the training targets of a region model)."""
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    return np.stack([np.isin(labels, m) for m in rs.members])


def scored_masks(labels: np.ndarray, rs: RegionSet) -> np.ndarray:
    """Store labels ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) → bool ``(S, X, Y, Z)``, one channel per
    scored region of ``rs`` (``rs.scored`` order)."""
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    return np.stack([np.isin(labels, m) for m in rs.scored.values()])


def paint_labels(regions: np.ndarray, rs: RegionSet) -> np.ndarray:
    """Bool/0-1 outputs ``(R, X, Y, Z)`` → store labels ``(X, Y, Z)`` uint8, each output painted
    with its label in ``rs`` order, later ones winning (for WT/TC/ET: WT∖TC → ED, TC∖ET → NCR,
    ET → ET, as the BraTS scripts rebuild it)."""
    if len(regions) != len(rs.outputs):
        raise ValueError(
            f"{rs.profile}: expected {rs.describe()}, got {len(regions)} output channels"
        )
    out = np.zeros(np.shape(regions[0]), dtype=np.uint8)
    for mask, label in zip(regions, rs.paint, strict=True):
        out[np.asarray(mask, dtype=bool)] = label
    return out


def probabilities_to_store_labels(
    probs: np.ndarray, output: str, rs: RegionSet, threshold: float = 0.5
) -> np.ndarray:
    """Model probabilities ``(C, X, Y, Z)`` → store labels ``(X, Y, Z)`` uint8: region models
    threshold and paint (:func:`paint_labels`), label models take the argmax over
    ``rs.values``."""
    if output == "regions":
        return paint_labels(probs >= threshold, rs)
    values = np.asarray(rs.values, dtype=np.uint8)
    return values[np.argmax(probs, axis=0)]


def store_to_source(labels: np.ndarray, profile: str | Profile) -> np.ndarray:
    """Store labels → the profile's source convention (only BraTS 2021 differs: ET 3 → 4)."""
    prof = get_profile(profile)
    out = np.asarray(labels, dtype=np.uint8).copy()
    for source, stored in prof.store_labels.items():
        out[labels == stored] = source
    return out


def predicted_source_labels(
    probs: np.ndarray, output: str, rs: RegionSet, et_label: int, threshold: float = 0.5
) -> np.ndarray:
    """Model probabilities ``(C, X, Y, Z)`` → labels ``(X, Y, Z)`` uint8 in the case's own
    convention: a BraTS 2021/2023 model writes ET as the case's ``et_label`` (4 or 3), another
    profile's model its own source labels (e.g. RC 4)."""
    store = probabilities_to_store_labels(probs, output, rs, threshold)
    # 2021/2023: the case's own ET value (a 2023 model writes a 2021 case's ET as 4)
    legacy = rs.legacy
    return from_store_labels(store, et_label) if legacy else store_to_source(store, rs.profile)


def to_dataset_values(labels: np.ndarray, relabel: Mapping[int, int], rs: RegionSet) -> np.ndarray:
    """Labels in the profile's values → an nnU-Net dataset's own (``relabel``: dataset value →
    profile value, as read from its ``dataset.json``; inverted here).

    Raises:
        ValueError: a label of the profile has no value in the dataset.
    """
    inverse = {int(v): int(k) for k, v in relabel.items()}
    prof = get_profile(rs.profile)
    if missing := sorted(set(prof.allowed_labels) - set(inverse)):
        raise ValueError(
            f"labels {missing} of profile {rs.profile} have no value in the dataset's "
            f"dataset.json (its labels map to {sorted(inverse)})"
        )
    return relabel_values(labels, inverse)


def predicted_masks(
    probs: np.ndarray, output: str, rs: RegionSet, threshold: float = 0.5
) -> np.ndarray:
    """Model probabilities ``(C, X, Y, Z)`` → bool ``(S, X, Y, Z)`` per scored region of ``rs``.

    The BraTS 2021/2023 region models are scored on their thresholded outputs as they are (the
    outputs are the scored regions); any other profile's via the label map rebuilt from them,
    the one ``predict`` writes (its outputs, e.g. WT/TC/ET/RC, are not its six regions)."""
    if output == "regions" and rs.legacy:
        return probs >= threshold
    return scored_masks(probabilities_to_store_labels(probs, output, rs, threshold), rs)
