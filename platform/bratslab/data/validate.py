"""Load and validate raw BraTS cases; every problem becomes a :class:`Failure` naming the file.

Each file is read once by :func:`bratslab.data.nifti.load_nifti`, which checks the header
before anything large is allocated, the file size against the header, every gzip CRC, the
voxel type, voxel sizes and NaN/Inf. On top of that, :func:`load_case` checks the case as a
whole. Preprocessing reads cases through :func:`load_case` too, so ``data validate`` and
``data preprocess`` reject exactly the same cases for the same reasons.

Classes detected: missing/duplicate modality, empty case folder (:func:`empty_case_folders`),
empty file, unreadable file (not NIfTI-1, I/O error), truncated file, trailing data, corrupt
gzip (incl. CRC trailer), absurd header dimensions or sizes, non-3-D image, voxel types that
are not real scalars (RGB, complex), non-finite or non-positive voxel sizes, shape or affine
mismatch between modalities and seg, NaN/Inf voxels, intensities beyond float32, non-integer
labels, labels outside the layout's convention, images with no non-zero voxel, a case
declaring far more voxel bytes than its files could plausibly hold.

Memory: files that inflate to far more than their size are streamed through first
(:mod:`bratslab.data.nifti_scan`), and a case over :data:`CASE_BUDGET_BYTES` at more than
:data:`CASE_MAX_RATIO` times its size on disk is refused unloaded, so a case of a few MB costs
at most ~160 MiB of voxels, whatever its headers say.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab.data.conventions import (
    allowed_labels,
    apply_relabel,
    profile_hint,
    resolve_convention,
)
from bratslab.data.layout import MODALITIES, RawCase
from bratslab.data.nifti import (
    MAX_BYTES,
    MAX_DIM,
    MAX_VOXELS,
    NiftiError,
    NiftiVolume,
    load_nifti,
    read_header,
)
from bratslab.data.nifti_scan import needs_scan, scan_nifti

CASE_BUDGET_BYTES = 160 << 20  # voxel bytes any case may declare, however small its files
CASE_MAX_RATIO = 24  # beyond that, declared voxel bytes per byte on disk of the whole case
AFFINE_ATOL = 1e-3  # mm: co-registered BraTS modalities share an affine up to float noise
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CaseError(NiftiError):
    """A problem with one file of a case found after reading it (e.g. its labels)."""


@dataclass
class Failure:
    """One reason why a case is quarantined (what ``failures.json`` lists)."""

    case: str
    file: str
    reason: str

    def to_dict(self) -> dict:
        return {"case": self.case, "file": self.file, "reason": self.reason}


@dataclass
class LoadedCase:
    """A validated case in memory.

    Attributes:
        case: the :class:`RawCase`.
        images: canonical modality → ``(X, Y, Z)`` volume (file dtype, usually int16).
        seg: ``(X, Y, Z)`` uint8 labels in the *source* convention, or None.
        label_counts: voxels per source label (index = label), or None.
        affine, zooms, header: from the first modality.
        sha256: file key (modality or ``seg``) → sha256 of the file on disk.
    """

    case: RawCase
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    label_counts: np.ndarray | None
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header: nib.Nifti1Header
    sha256: dict[str, str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.images[MODALITIES[0]].shape


def check_labels(
    seg: np.ndarray,
    path: str | Path,
    et_label: int,
    layout: str,
    allowed_values: list[int] | None = None,
    hint_for_4: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Check integer labels within ``{0, 1, 2, et_label}`` (or ``allowed_values``, a profile's;
    ``layout`` is then the profile's name in messages; ``hint_for_4`` is appended to the error
    when label 4 is one of the values outside).

    Returns:
        ``(seg (X, Y, Z) uint8, counts)`` where ``counts[v]`` is the voxel count of label v.
    """
    if seg.dtype.kind == "f":
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise CaseError(path, "segmentation holds non-integer values")
        seg = rounded
    if seg.dtype.kind not in "iuf":
        raise CaseError(path, f"segmentation has non-numeric dtype {seg.dtype}")
    allowed = set(allowed_values) if allowed_values is not None else {0, 1, 2, et_label}
    if seg.dtype != np.uint8:
        lo, hi = seg.min(), seg.max()
        if lo < 0 or hi > 255:
            raise CaseError(
                path,
                f"labels outside the {layout} convention {sorted(allowed)}: "
                f"values from {lo:g} to {hi:g}",
            )
    seg8 = seg.astype(np.uint8, copy=False)
    flat = seg8.ravel(order="K")
    hi8 = int(flat.max())
    if hi8 <= 7:  # the usual case: a few compares beat bincount's cast of every voxel to intp
        counts = np.array([np.count_nonzero(flat == v) for v in range(max(hi8 + 1, 5))])
    else:
        counts = np.bincount(flat, minlength=5)
    bad = sorted(int(v) for v in np.flatnonzero(counts) if int(v) not in allowed)
    if bad:
        hint = hint_for_4 if 4 in bad else ""
        other = 3 if et_label == 4 else 4
        if bad == [other] and not hint and allowed_values is None:
            hint = f" (ET={other} is the other BraTS convention: is the layout right?)"
        raise CaseError(
            path, f"labels {bad} outside the {layout} convention {sorted(allowed)}{hint}"
        )
    return seg8, counts


def _screen(case: RawCase, limits: dict) -> tuple[set[str], list[Failure]]:
    """Stream-check (:mod:`bratslab.data.nifti_scan`) the files that inflate to far more than
    their size, before any file is held in memory: ``(keys checked, failures)``. A modality
    with no non-zero voxel fails here ("image is all zeros"), so a few-MB case declaring GBs
    of zeros costs a few MiB, not its declared size (a seg may be all background)."""
    screened: set[str] = set()
    failures: list[Failure] = []
    for key, path in case.all_files().items():
        try:
            if needs_scan(path, limits) is None:
                continue
            screened.add(key)
            scan = scan_nifti(path, limits)
        except NiftiError as e:
            screened.add(key)  # its one failure is this one
            failures.append(Failure(case.id, e.file, e.reason))
            continue
        except Exception as e:  # a reader bug must not hide the other files' problems
            screened.add(key)
            reason = f"internal error while reading: {type(e).__name__}: {e}"
            failures.append(Failure(case.id, str(path), reason))
            continue
        if key != "seg" and scan.nonzero == 0:
            failures.append(Failure(case.id, str(path), "image is all zeros"))
    if not failures:
        failures += _over_budget(case, limits)
    return screened, failures


def _over_budget(case: RawCase, limits: dict) -> list[Failure]:
    """A case whose files together declare more than :data:`CASE_BUDGET_BYTES` of voxels at
    more than :data:`CASE_MAX_RATIO` times their size on disk is refused before loading: real
    scans do not compress that well (a BraTS case inflates ~8x, to ~80 MB), so this is a nearly
    empty volume at an implausible size, and loading it would cost memory out of proportion to
    the input. Bounds what any case of a few MB can cost (see the module docstring)."""
    declared = on_disk = 0
    for path in case.all_files().values():
        try:
            declared += read_header(path, **limits).nbytes
            on_disk += Path(path).stat().st_size
        except (NiftiError, OSError):
            return []  # the load names the problem
    if declared <= max(CASE_BUDGET_BYTES, CASE_MAX_RATIO * on_disk):
        return []
    folder = Path(next(iter(case.all_files().values()))).parent
    reason = (
        f"its files declare {declared / 2**20:.0f} MiB of voxels in {on_disk / 2**20:.1f} MiB "
        f"on disk ({declared / max(on_disk, 1):.0f}x; real scans inflate under "
        f"{CASE_MAX_RATIO}x): nearly empty volumes at an implausible size, not loaded"
    )
    return [Failure(case.id, str(folder), reason)]


def _read_files(case: RawCase, limits: dict) -> tuple[dict[str, NiftiVolume], list[Failure]]:
    """Every file of ``case`` through the guarded loader; one failure per unreadable file.

    Suspicious files are screened first (:func:`_screen`); when that finds a problem, the
    case is lost anyway, so only the other files are still read (for their own problems) and
    none is kept."""
    screened, failures = _screen(case, limits)
    vols: dict[str, NiftiVolume] = {}
    for key, path in case.all_files().items():
        if failures and key in screened:
            continue
        try:
            vol = load_nifti(path, **limits)
            if not failures:
                vols[key] = vol
            del vol
        except NiftiError as e:
            failures.append(Failure(case.id, e.file, e.reason))
        except Exception as e:  # a reader bug must not hide the other files' problems
            reason = f"internal error while reading: {type(e).__name__}: {e}"
            failures.append(Failure(case.id, str(path), reason))
    return vols, failures


def _check_together(case: RawCase, vols: dict[str, NiftiVolume]):
    """Case-level checks of readable files: ``(case with its ET label, seg, counts, failures)``."""
    files = case.all_files()
    ref_key = MODALITIES[0]
    ref = vols[ref_key]
    failures: list[Failure] = []
    for key, vol in vols.items():
        if vol.data.shape != ref.data.shape:
            reason = f"shape {vol.data.shape} differs from {ref_key} {ref.data.shape}"
            failures.append(Failure(case.id, str(files[key]), reason))
        elif not np.allclose(vol.affine, ref.affine, rtol=0, atol=AFFINE_ATOL):
            reason = f"affine differs from {ref_key}'s (not co-registered)"
            failures.append(Failure(case.id, str(files[key]), reason))
    for m in MODALITIES:
        data = vols[m].data
        # Preprocessing works in float32: larger magnitudes would become Inf there.
        if data.dtype.kind == "f" and data.dtype.itemsize > 4 and data.size:
            peak = max(abs(float(data.max())), abs(float(data.min())))
            if peak > _FLOAT32_MAX:
                reason = f"intensities up to {peak:g} exceed the float32 range"
                failures.append(Failure(case.id, str(files[m]), reason))
    seg = counts = None
    if not failures and case.seg is not None:
        seg_data, bad_values = apply_relabel(case, vols["seg"].data)
        case, ambiguous = resolve_convention(case, seg_data)
        ambiguous = bad_values or ambiguous
        allowed, convention = allowed_labels(case)
        try:
            if ambiguous:
                raise CaseError(case.seg, ambiguous)
            seg, counts = check_labels(
                seg_data, case.seg, case.et_label, convention, allowed, profile_hint(case)
            )
        except CaseError as e:
            failures.append(Failure(case.id, e.file, e.reason))
    if not failures:
        for m in MODALITIES:
            if not vols[m].data.any():
                failures.append(Failure(case.id, str(files[m]), "image is all zeros"))
    return case, seg, counts, failures


def load_case(
    case: RawCase,
    *,
    max_dim: int = MAX_DIM,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> tuple[LoadedCase | None, list[Failure]]:
    """Read and validate every file of ``case``; never raises for bad input.

    Returns:
        ``(LoadedCase | None, list[Failure])``: the case if nothing is wrong, else None and
        every problem found (each file is checked even after an earlier one failed).
    """
    failures = [Failure(case.id, f, r) for f, r in case.problems]
    limits = {"max_dim": max_dim, "max_voxels": max_voxels, "max_bytes": max_bytes}
    vols, bad = _read_files(case, limits)
    failures += bad
    if failures:
        return None, failures
    try:
        case, seg, counts, failures = _check_together(case, vols)
    except Exception as e:  # a checker bug must not stop the other cases of a run
        reason = f"internal error while validating: {type(e).__name__}: {e}"
        failures = [Failure(case.id, "", reason)]
    if failures:
        return None, failures
    ref = vols[MODALITIES[0]]
    return (
        LoadedCase(
            case=case,
            images={m: vols[m].data for m in MODALITIES},
            seg=seg,
            label_counts=counts,
            affine=ref.affine,
            zooms=ref.zooms,
            header=ref.header,
            sha256={k: v.sha256 for k, v in vols.items()},
        ),
        [],
    )


def file_hashes(case: RawCase) -> dict[str, str] | None:
    """sha256 of every file of ``case`` as stored on disk (None if one cannot be read)."""
    out = {}
    for key, path in case.all_files().items():
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            out[key] = h.hexdigest()
        except OSError:
            return None
    return out


def empty_case_folders(raw_dir: str | Path, cases: list[RawCase]) -> list[Failure]:
    """Folders under ``raw_dir`` with no sub-folder that gave no case file: a case folder
    whose images are missing (an interrupted copy), named rather than silently skipped.
    Hidden folders (``.name``) are not looked at.

    Returns:
        One :class:`Failure` per such folder: ``case`` is the folder's name.
    """
    raw_dir = Path(raw_dir)
    used = {p.parent for c in cases for p in c.all_files().values()}
    used |= {q for c in cases for f, _ in c.problems for q in (Path(f), Path(f).parent)}
    out = []
    for folder in sorted(p for p in raw_dir.rglob("*") if p.is_dir()):
        rel = folder.relative_to(raw_dir).parts
        if any(part.startswith(".") for part in rel) or folder in used:
            continue
        if any(p.is_dir() for p in folder.iterdir()):
            continue
        held = sum(1 for p in folder.iterdir() if not p.name.startswith("."))
        plural = "" if held == 1 else "s"
        what = "is empty" if held == 0 else f"holds no BraTS image ({held} other file{plural})"
        out.append(Failure(folder.name, str(folder), f"case folder {what}"))
    return out
