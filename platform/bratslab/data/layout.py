"""BraTS file naming: case discovery, modality synonyms, layout and label-convention detection.

Layouts:

=============  ==========================================================  ===========
layout         example                                                     ET label
=============  ==========================================================  ===========
``brats2021``  ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}``  4
``brats2023``  ``BraTS-SSA-00002-000/BraTS-SSA-00002-000-{t1n,t1c,t2w,t2f,seg}``  3
=============  ==========================================================  ===========

2023+ cohorts GLI, SSA, PED, MEN (incl. MEN-RT), MET share the 2023 convention. Case folders may
also be flat (all files in one folder): files are grouped by the name left after removing the
modality suffix. Cases without a ``seg`` file are inference-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
"""Canonical channel order of the store (then the foreground mask)."""


Layout = Literal["brats2021", "brats2023"]


ET_LABEL: dict[str, int] = {"brats2021": 4, "brats2023": 3}
"""Label of the enhancing tumour in each layout's convention."""


# Synonyms are matched case-insensitively with '_' and '-' treated alike, longest first, as the
# last part of a file's stem.
SYNONYMS: dict[str, str] = {
    "t1": "t1n",
    "t1n": "t1n",
    "t1w": "t1n",
    "t1-native": "t1n",
    "t1native": "t1n",
    "t1ce": "t1c",
    "t1c": "t1c",
    "t1gd": "t1c",
    "t1-gd": "t1c",
    "t1post": "t1c",
    "t1-post": "t1c",
    "t2": "t2w",
    "t2w": "t2w",
    "flair": "t2f",
    "t2f": "t2f",
    "t2-flair": "t2f",
    "t2flair": "t2f",
    "seg": "seg",
}


# Names that only the 2021 release uses; a case with unrecognised folder names that uses them is
# taken as 2021-style (ET = 4).
_SYNONYMS_2021 = {"t1", "t1ce", "t2", "flair"}


_BY_LENGTH = sorted(SYNONYMS, key=len, reverse=True)


_RE_2021 = re.compile(r"^BraTS20\d\d_\d+$", re.IGNORECASE)


_RE_2023 = re.compile(r"^BraTS-(GLI|SSA|PED|MEN-RT|MEN|MET|GoAT)-\d+(-\d+)?$", re.IGNORECASE)


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class RawCase:
    """One case found on disk.

    Attributes:
        id: case id (the file-name prefix, e.g. ``BraTS-SSA-00002-000``).
        files: canonical modality (``t1n``, ``t1c``, ``t2w``, ``t2f``) → path; missing ones absent.
        seg: the segmentation, or None for an inference-only case.
        layout: ``brats2021`` or ``brats2023``.
        et_label: ET label of the source convention (4 for 2021, 3 for 2023+).
        cohort: ``GLI``/``SSA``/``PED``/``MEN``/``MET``/... when the name tells, else None.
        problems: ``(file, reason)`` found during discovery (missing or duplicated modality);
            validation turns them into failures.
        profile: the challenge profile (:mod:`bratslab.data.profiles`) the case is read in:
            given by the user (``--profile``) or detected from its labels (RC); None: the
            BraTS 2021/2023 convention its layout names.
        relabel: source label value → profile value, applied when the seg is read (nnU-Net
            datasets, whose BraTS values are 1 = ED, 2 = NCR, 3 = ET); None: values as they are.
    """

    id: str
    files: dict[str, Path]
    seg: Path | None
    layout: Layout
    et_label: int
    cohort: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    profile: str | None = None
    relabel: dict[int, int] | None = None

    @property
    def has_label(self) -> bool:
        return self.seg is not None

    def all_files(self) -> dict[str, Path]:
        """Modalities in canonical order, then ``seg`` if present."""
        out = {m: self.files[m] for m in MODALITIES if m in self.files}
        if self.seg is not None:
            out["seg"] = self.seg
        return out

    def to_dict(self) -> dict:
        """JSON-friendly form (used to ship a case to a Ray task)."""
        return {
            "id": self.id,
            "files": {k: str(v) for k, v in self.files.items()},
            "seg": str(self.seg) if self.seg else None,
            "layout": self.layout,
            "et_label": self.et_label,
            "cohort": self.cohort,
            "problems": [list(p) for p in self.problems],
            "profile": self.profile,
            "relabel": {str(k): v for k, v in self.relabel.items()} if self.relabel else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RawCase:
        return cls(
            id=d["id"],
            files={k: Path(v) for k, v in d["files"].items()},
            seg=Path(d["seg"]) if d.get("seg") else None,
            layout=d["layout"],
            et_label=int(d["et_label"]),
            cohort=d.get("cohort"),
            problems=[tuple(p) for p in d.get("problems", [])],
            profile=d.get("profile"),
            relabel={int(k): int(v) for k, v in d["relabel"].items()} if d.get("relabel") else None,
        )


def strip_nifti_suffix(name: str) -> str | None:
    """``x.nii.gz`` → ``x``; None for a file that is not NIfTI."""
    low = name.lower()
    for suf in NIFTI_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return None


def parse_file_name(name: str) -> tuple[str, str, str] | None:
    """Split a NIfTI file name into ``(case_id, canonical_modality, source_token)``.

    ``BraTS2021_00000_t1ce.nii.gz`` → ``("BraTS2021_00000", "t1c", "t1ce")``. Returns None when
    the name carries no known modality suffix.
    """
    stem = strip_nifti_suffix(name)
    if stem is None:
        return None
    norm = stem.lower().replace("_", "-")
    for token in _BY_LENGTH:
        tok = token.replace("_", "-")
        if norm.endswith("-" + tok):
            case_id = stem[: len(stem) - len(tok) - 1]
            if case_id:
                return case_id, SYNONYMS[token], token
    return None


def detect_layout(case_id: str, tokens: set[str]) -> tuple[Layout, str | None]:
    """Layout and cohort from the case id; unknown ids fall back to the modality names used."""
    if _RE_2021.match(case_id):
        return "brats2021", "GLI"
    m = _RE_2023.match(case_id)
    if m:
        return "brats2023", m.group(1).upper()
    if tokens & _SYNONYMS_2021:
        return "brats2021", None
    return "brats2023", None


def missing_modalities(files: dict) -> str | None:
    """One reason naming every modality a case lacks and what it has, or None when complete:
    ``"missing modalities t1c, t2f (found t1n, t2w)"``."""
    missing = [m for m in MODALITIES if m not in files]
    if not missing:
        return None
    found = ", ".join(m for m in MODALITIES if m in files) or "no image"
    word = "modality" if len(missing) == 1 else "modalities"
    return f"missing {word} {', '.join(missing)} (found {found})"


def case_file_name(case_id: str, modality: str, layout: Layout) -> str:
    """The file name a case's modality (or ``seg``) has in ``layout`` (used by synth and export)."""
    if layout == "brats2021":
        token = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}[modality]
        return f"{case_id}_{token}.nii.gz"
    return f"{case_id}-{modality}.nii.gz"
