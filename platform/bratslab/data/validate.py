"""Load and validate raw BraTS cases; every problem becomes a :class:`Failure` naming the file.

nibabel loads lazily: a truncated ``.nii.gz`` only fails at ``get_fdata()``, a damaged gzip CRC
is not noticed unless the whole stream is decompressed, and NaN/Inf pass silently (REFERENCE.md).
So each file is read here exactly once: the whole gzip stream is decompressed (zlib checks CRC32
and length at the end), the header is parsed and checked *before* the voxel buffer is trusted,
and the voxels are a zero-copy view of the decompressed bytes.

Classes detected: missing/duplicate modality, empty file, unreadable file (not NIfTI, I/O
error), truncated file, corrupt gzip (incl. CRC trailer), absurd header dimensions, non-3-D
image, shape or affine mismatch between modalities and seg, NaN/Inf voxels, non-integer labels,
labels outside the layout's convention, images with no non-zero voxel.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab.data.layout import MODALITIES, RawCase

MAX_DIM = 2048  # voxels per axis; BraTS is 240x240x155, anything this large is a broken header
MAX_VOXELS = 512 * 1024 * 1024  # per image, checked before any allocation
AFFINE_ATOL = 1e-3  # mm: co-registered BraTS modalities share an affine up to float noise


class CaseError(Exception):
    """A problem with one file of a case; ``str()`` is ``"<file>: <reason>"``."""

    def __init__(self, file: str | Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason


@dataclass
class Failure:
    """One reason why a case is quarantined (what ``failures.json`` lists)."""

    case: str
    file: str
    reason: str

    def to_dict(self) -> dict:
        return {"case": self.case, "file": self.file, "reason": self.reason}


@dataclass
class NiftiVolume:
    """One decoded NIfTI image.

    Attributes:
        data: ``(X, Y, Z)`` voxels in the file's dtype (scaled to float32 if the header sets
            ``scl_slope``/``scl_inter``); Fortran-ordered view of the decompressed bytes.
        affine: ``(4, 4)`` float64 voxel → world (mm) transform (sform, else qform).
        zooms: voxel size in mm, ``(3,)``.
        header: the nibabel :class:`~nibabel.Nifti1Header`.
        sha256: hash of the file as stored on disk (compressed bytes).
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header: nib.Nifti1Header
    sha256: str


def _gunzip(raw: bytes, path: Path, max_bytes: int) -> bytes:
    """Decompress a whole (possibly multi-member) gzip stream, verifying every CRC trailer."""
    out: list[bytes] = []
    total = 0
    data = raw
    while True:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(data, max_bytes + 1 - total)
        except zlib.error as e:
            msg = str(e)
            if "incorrect data check" in msg or "incorrect length check" in msg:
                raise CaseError(path, f"corrupt gzip: damaged CRC/length trailer ({msg})") from e
            raise CaseError(path, f"corrupt gzip stream ({msg})") from e
        total += len(chunk)
        out.append(chunk)
        if total > max_bytes:
            raise CaseError(path, f"decompresses to more than {max_bytes} bytes (gzip bomb?)")
        if not d.eof:
            raise CaseError(path, "truncated gzip stream (file cut short)")
        data = d.unused_data
        if not data.strip(b"\x00"):  # trailing zero padding is tolerated by gzip readers
            break
    return out[0] if len(out) == 1 else b"".join(out)


def read_nifti(path: str | Path, *, max_dim: int = MAX_DIM, max_voxels: int = MAX_VOXELS):
    """Read and check one ``.nii``/``.nii.gz`` file completely.

    Returns:
        :class:`NiftiVolume` with ``data`` of shape ``(X, Y, Z)`` (a trailing singleton 4th
        dimension is dropped).

    Raises:
        CaseError: naming ``path`` and the problem (empty, unreadable, truncated, corrupt gzip,
            absurd dimensions, not 3-D, NaN/Inf voxels).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CaseError(path, f"unreadable ({e.strerror or e})") from e
    if not raw:
        raise CaseError(path, "empty file")
    sha = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":
        # Upper bound before allocating: header dims are checked right after, this only stops
        # a decompression bomb from exhausting memory first.
        raw = _gunzip(raw, path, max_bytes=max_voxels * 8 + (1 << 20))
    elif path.name.lower().endswith(".gz"):
        raise CaseError(path, "not a gzip file despite the .gz suffix")
    if len(raw) < 348:
        raise CaseError(path, f"truncated: {len(raw)} bytes, shorter than a NIfTI header")
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:352]), check=True)
    except Exception as e:  # nibabel raises HeaderDataError / ValueError / struct errors
        raise CaseError(path, f"unreadable: not a NIfTI-1 header ({e})") from e

    dim = header["dim"]
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise CaseError(path, f"absurd header: dim[0]={ndim}")
    shape = tuple(int(s) for s in dim[1 : ndim + 1])
    if any(s < 1 or s > max_dim for s in shape):
        raise CaseError(path, f"absurd header dimensions {shape} (each must be 1..{max_dim})")
    nvox = int(np.prod(shape, dtype=np.int64))
    if nvox > max_voxels:
        raise CaseError(path, f"absurd header dimensions {shape}: {nvox} voxels")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise CaseError(path, f"not a 3-D image: shape {shape}")
    try:
        dtype = header.get_data_dtype()
    except Exception as e:
        raise CaseError(path, f"unreadable: unsupported datatype ({e})") from e
    offset = int(header["vox_offset"])
    need = offset + nvox * dtype.itemsize
    if len(raw) < need:
        raise CaseError(
            path, f"truncated: voxel data needs {need} bytes, the file holds {len(raw)}"
        )
    # Hand the verified bytes to nibabel for the affine/zoom logic (sform vs qform etc.).
    img = nib.Nifti1Image.from_bytes(raw[:offset] if offset >= 352 else raw[:352])
    data = np.frombuffer(raw, dtype=dtype, count=nvox, offset=offset).reshape(shape, order="F")
    slope, inter = header.get_slope_inter()
    if (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0):
        data = data.astype(np.float32) * np.float32(slope or 1.0) + np.float32(inter or 0.0)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n = int(np.count_nonzero(~np.isfinite(data)))
        raise CaseError(path, f"{n} NaN/Inf voxels")
    affine = img.affine
    if affine is None or not np.isfinite(affine).all():
        raise CaseError(path, "header has no valid affine")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    return NiftiVolume(data=data, affine=affine, zooms=zooms, header=header, sha256=sha)


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


def check_labels(seg: np.ndarray, path: str | Path, et_label: int, layout: str) -> np.ndarray:
    """Integer-valued labels within ``{0, 1, 2, et_label}``; returns them as uint8 ``(X, Y, Z)``."""
    if seg.dtype.kind == "f":
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise CaseError(path, "segmentation holds non-integer values")
        seg = rounded
    if seg.dtype.kind not in "iuf":
        raise CaseError(path, f"segmentation has non-numeric dtype {seg.dtype}")
    lo, hi = seg.min(), seg.max()
    allowed = {0, 1, 2, et_label}
    if lo < 0 or hi > 255:
        raise CaseError(path, f"labels outside the {layout} convention {sorted(allowed)}: {lo}")
    seg8 = seg.astype(np.uint8, copy=False)
    counts = np.bincount(seg8.ravel(order="K"), minlength=5)
    bad = sorted(int(v) for v in np.flatnonzero(counts) if int(v) not in allowed)
    if bad:
        hint = ""
        other = 3 if et_label == 4 else 4
        if bad == [other]:
            hint = f" (ET={other} is the other BraTS convention: is the layout right?)"
        raise CaseError(
            path, f"labels {bad} outside the {layout} convention {sorted(allowed)}{hint}"
        )
    return seg8


def load_case(case: RawCase, *, max_dim: int = MAX_DIM, max_voxels: int = MAX_VOXELS):
    """Read and validate every file of ``case``.

    Returns:
        ``(LoadedCase | None, list[Failure])``: the case if nothing is wrong, else None and
        every problem found (each file is checked even after an earlier one failed).
    """
    failures = [Failure(case.id, f, r) for f, r in case.problems]
    vols: dict[str, NiftiVolume] = {}
    for key, path in case.all_files().items():
        try:
            vols[key] = read_nifti(path, max_dim=max_dim, max_voxels=max_voxels)
        except CaseError as e:
            failures.append(Failure(case.id, e.file, e.reason))
    if failures:
        return None, failures

    ref_key = MODALITIES[0]
    ref = vols[ref_key]
    for key, vol in vols.items():
        path = case.all_files()[key]
        if vol.data.shape != ref.data.shape:
            failures.append(
                Failure(
                    case.id,
                    str(path),
                    f"shape {vol.data.shape} differs from {ref_key} {ref.data.shape}",
                )
            )
        elif not np.allclose(vol.affine, ref.affine, rtol=0, atol=AFFINE_ATOL):
            failures.append(
                Failure(case.id, str(path), f"affine differs from {ref_key}'s (not co-registered)")
            )
    seg = counts = None
    if not failures and case.seg is not None:
        try:
            seg = check_labels(vols["seg"].data, case.seg, case.et_label, case.layout)
            counts = np.bincount(seg.ravel(order="K"), minlength=5)
        except CaseError as e:
            failures.append(Failure(case.id, e.file, e.reason))
    if not failures:
        for m in MODALITIES:
            if not vols[m].data.any():
                failures.append(Failure(case.id, str(case.files[m]), "image is all zeros"))
    if failures:
        return None, failures
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
