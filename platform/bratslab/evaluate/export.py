"""Kaggle-style run-length encoding (RLE) of predicted masks.

Format (the convention of Kaggle segmentation competitions):

* the boolean mask ``(X, Y, Z)`` is flattened in **column-major (Fortran) order**: X varies
  fastest, then Y, then Z (``mask.flatten(order="F")``);
* runs of foreground voxels are written as ``start length`` pairs separated by spaces, with
  **1-based** starts, in increasing order; an empty mask is the empty string.

``bratslab export rle PRED OUT.csv`` writes one row per case × region with the columns
``id,case,region,shape,rle``: ``id`` is ``{case}_{region}`` (Kaggle's row key), ``shape`` the
volume shape as ``XxYxZ`` so a row can be decoded on its own. Regions are WT, TC and ET (what the
models predict); ``--by labels`` writes the labels 1, 2 and ET instead (ET = 3 or 4, whichever the
file's convention uses). With a challenge profile (``--profile``, :mod:`bratslab.data.profiles`)
the rows are the profile's regions (ET, NETC, SNFH, RC, TC, WT for post-treatment glioma) or
its labels by name (``netc``, ``snfh``, ``et``, ``rc``).

A prediction that cannot be read (truncated, not 3-D, bad labels) is reported with its file and
the reason and left out while the other cases are exported; a folder without any prediction is
an error (:class:`NoPredictionsError`), not an empty submission.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bratslab.atomic import write_text
from bratslab.data.labels import REGIONS
from bratslab.data.profiles import get_profile
from bratslab.evaluate.label_maps import (
    prediction_files,
    read_label_map,
    readable_label_maps,
)
from bratslab.evaluate.score_report import check_output_files

COLUMNS = ("id", "case", "region", "shape", "rle")
MASK_SETS = ("regions", "labels")


class NoPredictionsError(FileNotFoundError):
    """The prediction folder exists but holds no ``{case}.nii.gz`` mask to export."""


@dataclass
class ExportReport:
    """What :func:`export_rle` did: rows written, cases exported, cases that failed
    (``{"case", "file", "reason"}``)."""

    rows: int = 0
    cases: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def rle_encode(mask: np.ndarray) -> str:
    """Bool mask (any shape) → ``"start length start length ..."`` (Fortran order, 1-based)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])  # 0-based run starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_decode(rle: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: ``rle`` → bool mask of ``shape``.

    Raises:
        ValueError: odd number of values, non-positive start/length, overlapping or
            out-of-range runs.
    """
    size = int(np.prod(shape))
    values = np.array(rle.split(), dtype=np.int64) if rle.strip() else np.zeros(0, np.int64)
    if len(values) % 2:
        raise ValueError("RLE: expected start/length pairs, got an odd number of values")
    starts, lengths = values[0::2] - 1, values[1::2]
    if np.any(starts < 0) or np.any(lengths < 1):
        raise ValueError("RLE: starts must be >= 1 and lengths >= 1")
    if np.any(starts + lengths > size):
        raise ValueError(f"RLE: a run ends past the volume ({size} voxels)")
    if np.any(starts[1:] < starts[:-1] + lengths[:-1]):
        raise ValueError("RLE: runs must be sorted and must not overlap")
    flat = np.zeros(size, dtype=bool)
    for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        flat[s : s + n] = True
    return flat.reshape(tuple(shape), order="F")


def label_masks(
    labels: np.ndarray, by: str = "regions", profile: str | None = None
) -> dict[str, np.ndarray]:
    """Label map ``(X, Y, Z)`` (ET = 3 or 4) → named bool masks.

    ``by="regions"``: ``wt`` (>0), ``tc`` (1 or ET), ``et``; ``by="labels"``: ``1``, ``2``, ``et``.
    With ``profile``: its regions (its own names and label unions), or its labels by name.
    """
    labels = np.asarray(labels)
    if profile is not None:
        prof = get_profile(profile)
        if by == "regions":
            return {r: np.isin(labels, members) for r, members in prof.regions.items()}
        if by == "labels":
            return {name.lower().replace("/", "_"): labels == v for v, name in prof.labels.items()}
    et = (labels == 3) | (labels == 4)  # no BraTS convention uses both 3 and 4
    if by == "regions":
        return {"wt": labels > 0, "tc": (labels == 1) | et, "et": et}
    if by == "labels":
        return {"1": labels == 1, "2": labels == 2, "et": et}
    raise ValueError(f"by must be one of {MASK_SETS}, not {by!r}")


def case_rle_rows(
    case: str, labels: np.ndarray, by: str = "regions", profile: str | None = None
) -> list[dict[str, str]]:
    """Rows ``{id, case, region, shape, rle}`` of one label map ``(X, Y, Z)`` (names: see
    :func:`label_masks`)."""
    shape = "x".join(map(str, labels.shape))
    return [
        {"id": f"{case}_{name}", "case": case, "region": name, "shape": shape, "rle": rle_encode(m)}
        for name, m in label_masks(labels, by, profile).items()
    ]


def iter_rle_rows(pred_dir: str | Path, by: str = "regions") -> Iterator[dict[str, str]]:
    """Rows for every ``PRED/{case}.nii.gz``, in case order.

    Raises:
        FileNotFoundError: no such folder. CaseError (a ValueError): a damaged prediction.
    """
    for case, path in prediction_files(pred_dir):
        yield from case_rle_rows(case, read_label_map(path)[0], by)


def export_rle(
    pred_dir: str | Path,
    out_csv: str | Path,
    by: str = "regions",
    overwrite: bool = False,
    profile: str | None = None,
) -> ExportReport:
    """Write the RLE CSV of every readable prediction in ``pred_dir`` atomically; an existing
    ``out_csv`` (a submission already made) is replaced only with ``overwrite``.

    Damaged predictions are listed in the report's ``failures`` and left out; the CSV is written
    when at least one case could be exported.

    Raises:
        ValueError: ``out_csv`` is a directory, exists without ``overwrite``, or ``by`` is
            unknown (before reading anything).
        FileNotFoundError: no such prediction folder.
        NoPredictionsError: the folder holds no prediction.
    """
    check_output_files(out_csv)
    if Path(out_csv).exists() and not overwrite:
        raise ValueError(f"{out_csv}: exists; pass --overwrite to replace it")
    if by not in MASK_SETS:
        raise ValueError(f"by must be one of {MASK_SETS}, not {by!r}")
    if profile is not None:
        profile = get_profile(profile).name  # ValueError naming the known ones
    files = prediction_files(pred_dir)
    if not files:
        raise NoPredictionsError(
            f"{pred_dir}: no predictions to export (expected {{case}}.nii.gz files)"
        )
    report = ExportReport()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case, path, labels in readable_label_maps(files, report.failures):
        if profile is not None and (bad := profile_label_problem(labels, profile)):
            report.failures.append({"case": case, "file": str(path), "reason": bad})
            continue
        rows = case_rle_rows(case, labels, by, profile)
        writer.writerows(rows)
        report.rows += len(rows)
        report.cases.append(case)
    if report.cases:
        write_text(out_csv, buf.getvalue())
    return report


def profile_label_problem(labels: np.ndarray, profile: str) -> str | None:
    """Why a label map does not fit ``profile`` (values outside its labels), or None."""
    allowed = get_profile(profile).allowed_labels
    bad = sorted(set(np.unique(labels).tolist()) - set(allowed))
    return f"labels {bad} outside the {profile} convention {allowed}" if bad else None


def read_rle_csv(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Decode an RLE CSV written by :func:`export_rle` → ``{(case, region): bool mask}``."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            shape = tuple(int(s) for s in row["shape"].split("x"))
            out[(row["case"], row["region"])] = rle_decode(row["rle"], shape)
    return out


__all__ = [
    "COLUMNS",
    "REGIONS",
    "ExportReport",
    "NoPredictionsError",
    "case_rle_rows",
    "export_rle",
    "iter_rle_rows",
    "label_masks",
    "read_rle_csv",
    "rle_decode",
    "rle_encode",
]
