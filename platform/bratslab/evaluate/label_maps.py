"""Reading label maps back: predicted ``PRED/{case}.nii.gz`` files and reference segmentations.

Shared by ``bratslab evaluate`` and ``bratslab export``: both find the prediction files of a
folder the same way and reject a damaged file with a :class:`CaseError` that names the file and
the problem, so the caller can report that one case and go on with the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bratslab.data.discovery import discover_cases
from bratslab.data.nifti import NiftiError, load_nifti

VALID_LABELS = frozenset({0, 1, 2, 3, 4})  # background, NCR/NET, ED, ET (3 or 4 by convention)
MAP_SUFFIXES = ("_prob", "_std")  # probability / uncertainty maps beside the masks


class CaseError(ValueError):
    """One case cannot be used: ``file`` and ``reason``; ``str()`` is ``"{file}: {reason}"``."""

    def __init__(self, file: str | Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason

    def __reduce__(self):  # picklable across process pools despite the two-argument init
        return (type(self), (self.file, self.reason))


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3-D label map (either ET convention) → ``(labels (X, Y, Z) int16, spacing in mm)``.

    Read header first with bounded memory (:func:`bratslab.data.nifti.load_nifti`): a small
    file whose header claims a huge volume is rejected before anything that size is allocated.

    Raises:
        CaseError: unreadable, truncated or absurd file, not 3-D, non-integer values, or labels
            outside {0, 1, 2, 3, 4}.
    """
    try:
        vol = load_nifti(path, check_finite=False)  # non-finite values are named below
    except NiftiError as e:
        raise CaseError(e.file, f"cannot read the label map: {e.reason}") from None
    data = vol.data
    if data.ndim != 3:
        raise CaseError(path, f"expected a 3-D label map, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data != np.rint(data)):
        raise CaseError(path, "label map holds non-integer values")
    labels = data.astype(np.int16)
    bad = set(np.unique(labels).tolist()) - VALID_LABELS
    if bad:
        raise CaseError(path, f"unexpected labels {sorted(bad)} (expected 0, 1, 2, 3|4)")
    return labels, tuple(float(z) for z in vol.zooms)


def readable_label_maps(
    files: list[tuple[str, Path]], failures: list[dict[str, str]]
) -> Iterator[tuple[str, Path, np.ndarray]]:
    """``(case, path, labels)`` of each ``(case, path)`` whose label map reads; one that does
    not is added to ``failures`` as ``{case, file, reason}`` and skipped (the others go on)."""
    for case, path in files:
        try:
            labels, _ = read_label_map(path)
        except CaseError as e:
            failures.append({"case": case, "file": e.file, "reason": e.reason})
            continue
        yield case, path, labels


def prediction_files(pred_dir: str | Path) -> list[tuple[str, Path]]:
    """``(case, path)`` of every ``{case}.nii.gz`` / ``{case}.nii`` mask in ``pred_dir``, sorted.

    Temp files (``.name...``) and probability / uncertainty maps are not masks and are left out.

    Raises:
        FileNotFoundError: ``pred_dir`` is not a folder.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such prediction folder")
    out = []
    for p in sorted(pred_dir.iterdir()):
        if not p.name.endswith((".nii.gz", ".nii")) or not p.is_file():
            continue
        case = p.name.removesuffix(".gz").removesuffix(".nii")
        if case.startswith(".") or case.endswith(MAP_SUFFIXES):
            continue
        out.append((case, p))
    return out


def paired_folders(pred_dir: str | Path, ref_dir: str | Path, purpose: str) -> tuple[Path, list]:
    """``(pred_dir, labelled reference cases)`` for scoring or fitting predictions against a
    raw folder: the :class:`~bratslab.data.layout.RawCase` of ``ref_dir`` that have a seg.

    Raises:
        FileNotFoundError: ``pred_dir`` is not a folder, or ``ref_dir`` has no labelled case
            (the message says what they were wanted for: ``purpose``, e.g. "score against").
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such prediction folder")
    refs = [c for c in discover_cases(ref_dir) if c.seg is not None]
    if not refs:
        raise FileNotFoundError(f"{ref_dir}: no cases with a segmentation to {purpose}")
    return pred_dir, refs


def find_prediction(pred_dir: Path, case_id: str) -> Path | None:
    """``pred_dir/{case_id}.nii.gz`` (or ``.nii``) if it exists, else None."""
    for name in (f"{case_id}.nii.gz", f"{case_id}.nii"):
        if (pred_dir / name).is_file():
            return pred_dir / name
    return None


__all__ = [
    "CaseError",
    "find_prediction",
    "paired_folders",
    "prediction_files",
    "read_label_map",
]
