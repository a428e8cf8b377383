"""Which label convention a case's segmentation is in: the user's ``--profile``, else its names
and label values, never a silent guess.

Without a profile:

- official names fix the release: ``BraTS2021_*`` → 2021 (ET = 4); ``BraTS-GLI-*`` holding label
  4 → post-treatment glioma (``brats2024-gli``: 4 is RC, since no 2023+ task uses 4 for ET);
  other 2023+ cohorts follow their 2023 convention (a 4 there is reported with the profile to
  give);
- other names: 2021 modality names (t1ce, flair, ...) read 4 as ET; otherwise a seg holding
  3 but not 4 is 2023-style, one holding 3 and 4 is post-treatment (RC), and one holding 4 but
  not 3 is **ambiguous** (2021's ET or the post-treatment RC): an error naming both readings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bratslab.data.layout import RawCase
from bratslab.data.profiles import get_profile

POST_TREATMENT = "brats2024-gli"


def resolve_convention(case: RawCase, seg: np.ndarray) -> tuple[RawCase, str | None]:
    """``(case with its profile and ET label set, reason it is ambiguous or None)``."""
    if case.profile is not None:
        prof = get_profile(case.profile)
        et = prof.et_label if prof.et_label is not None else case.et_label
        return dataclasses.replace(case, profile=prof.name, et_label=et), None
    if case.cohort is not None and (case.layout == "brats2021" or case.cohort != "GLI"):
        return case, None  # official names; a stray 3 or 4 is reported by the label checks
    has3, has4 = bool((seg == 3).any()), bool((seg == 4).any())
    if case.layout == "brats2021":  # other names, 2021 modality names: ET 4 unless only 3
        et = 3 if has3 and not has4 else case.et_label
        return dataclasses.replace(case, et_label=et), None
    if has4 and (has3 or case.cohort == "GLI"):
        return dataclasses.replace(case, profile=POST_TREATMENT, et_label=3), None
    if has4:
        return case, (
            "label 4 is ambiguous with these file names: ET in BraTS 2021 (--profile brats2021) "
            f"or the resection cavity RC of post-treatment glioma (--profile {POST_TREATMENT}); "
            "give --profile"
        )
    if has3 and case.et_label != 3:
        return dataclasses.replace(case, et_label=3), None
    return case, None


def allowed_labels(case: RawCase) -> tuple[list[int] | None, str]:
    """``(label values the case's seg may hold, the convention's name for messages)``;
    None: the layout's ``{0, 1, 2, ET}``."""
    if case.profile is not None:
        return get_profile(case.profile).allowed_labels, case.profile
    return None, case.layout


def profile_hint(case: RawCase) -> str:
    """For a seg holding label 4 outside the case's convention: the profile to give, or ''."""
    if case.profile is not None:
        return ""
    by_cohort = {"PED": "brats2024-ped", "MET": "brats2025-met", "GLI": POST_TREATMENT}
    name = by_cohort.get(case.cohort or "")
    return f" (label 4 is part of the {name} profile: give --profile {name})" if name else ""


def apply_relabel(case: RawCase, seg: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``case.relabel`` applied to ``seg`` (``(X, Y, Z)`` uint8 result), or the reason it
    cannot be: values the dataset does not declare."""
    if not case.relabel:
        return seg, None
    values = np.unique(seg)
    bad = sorted(v for v in values.tolist() if v not in case.relabel)
    if bad:
        declared = sorted(case.relabel)
        return seg, f"labels {bad} are not declared in dataset.json (declared: {declared})"
    return relabel_values(seg, case.relabel), None


def relabel_values(seg: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``seg`` (non-negative integer labels, all keys of ``mapping``) → mapped uint8 labels."""
    lut = np.zeros(max(int(seg.max(initial=0)), max(mapping)) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[seg.astype(np.intp, copy=False)]
