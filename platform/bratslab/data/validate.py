"""Load and validate raw BraTS cases; every problem becomes a :class:`Failure` naming the file.

nibabel loads lazily: a truncated ``.nii.gz`` only fails at ``get_fdata()``, a damaged gzip CRC
is not noticed unless the whole stream is decompressed, and NaN/Inf pass silently (REFERENCE.md).
So each file is read here exactly once: the header (the first 352 inflated bytes) is parsed and
checked first, so absurd dimensions and decompression bombs are refused before anything large is
allocated; then the whole gzip stream is decompressed (which verifies every CRC32 and length
trailer) and the voxels become a zero-copy view of those bytes.

Classes detected: missing/duplicate modality, empty file, unreadable file (not NIfTI, I/O
error), truncated file, corrupt gzip (incl. CRC trailer), absurd header dimensions, non-3-D
image, shape or affine mismatch between modalities and seg, NaN/Inf voxels, non-integer labels,
labels outside the layout's convention, images with no non-zero voxel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab.data.layout import MODALITIES, RawCase

try:  # ISA-L's inflate is ~1.6x faster than zlib's, same format and checks (optional)
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    _inflate = zlib

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


_GZIP_SLACK = 1 << 16  # bytes tolerated after the voxel data (some writers pad files)


@dataclass
class _HeaderInfo:
    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    nvox: int

    @property
    def size(self) -> int:
        """Bytes the file needs: header, extensions and voxel data."""
        return self.offset + self.nvox * self.dtype.itemsize


def _check_header(head: bytes, path: Path, max_dim: int, max_voxels: int) -> _HeaderInfo:
    """Parse the first 352 bytes and reject absurd dimensions before anything is allocated."""
    if len(head) < 348:
        raise CaseError(path, f"truncated: {len(head)} bytes, shorter than a NIfTI header")
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(head[:352]), check=True)
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
    if offset < 348 or offset > 1 << 24:
        raise CaseError(path, f"absurd header: vox_offset={offset}")
    return _HeaderInfo(header, shape, dtype, offset, nvox)


def _gunzip(raw: bytes, path: Path, limit_for: Callable[[bytes], int]) -> bytes:
    """Decompress a whole (possibly multi-member) gzip stream, verifying every CRC trailer.

    The first 352 bytes are inflated alone and handed to ``limit_for`` (which checks the header
    and returns how many bytes the file may hold), so a forged header or a decompression bomb
    is rejected before the rest is inflated.
    """
    try:
        head = _inflate.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(raw, 352)
        limit = limit_for(head)
        out: list[bytes] = []
        total = 0
        data = raw
        while True:
            d = _inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
            chunk = d.decompress(data, limit + 1 - total)
            total += len(chunk)
            out.append(chunk)
            if total > limit:
                raise CaseError(
                    path, f"decompresses to more than the {limit} bytes its header declares"
                )
            if not d.eof:
                raise CaseError(path, "truncated gzip stream (file cut short)")
            data = d.unused_data
            if not data.strip(b"\x00"):  # trailing zero padding is tolerated by gzip readers
                break
    except (zlib.error, _inflate.error) as e:
        msg = str(e)
        if any(t in msg.lower() for t in ("data check", "length check", "checksum")):
            raise CaseError(path, f"corrupt gzip: damaged CRC/length trailer ({msg})") from e
        raise CaseError(path, f"corrupt gzip stream ({msg})") from e
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
        found: list[_HeaderInfo] = []

        def limit_for(head: bytes) -> int:
            found.append(_check_header(head, path, max_dim, max_voxels))
            return found[0].size + _GZIP_SLACK

        raw = _gunzip(raw, path, limit_for)
        info = found[0]
    elif path.name.lower().endswith(".gz"):
        raise CaseError(path, "not a gzip file despite the .gz suffix")
    else:
        info = _check_header(raw[:352], path, max_dim, max_voxels)
    if len(raw) < info.size:
        raise CaseError(
            path, f"truncated: voxel data needs {info.size} bytes, the file holds {len(raw)}"
        )
    header = info.header
    # Hand the verified bytes to nibabel (no copy: BytesIO shares an immutable buffer) for the
    # affine logic (sform vs qform); the voxels are a zero-copy view of the same bytes.
    img = nib.Nifti1Image.from_bytes(raw)
    data = np.frombuffer(raw, dtype=info.dtype, count=info.nvox, offset=info.offset)
    data = data.reshape(info.shape, order="F")
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


def check_labels(
    seg: np.ndarray, path: str | Path, et_label: int, layout: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check integer labels within ``{0, 1, 2, et_label}``.

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
    allowed = {0, 1, 2, et_label}
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
        hint = ""
        other = 3 if et_label == 4 else 4
        if bad == [other]:
            hint = f" (ET={other} is the other BraTS convention: is the layout right?)"
        raise CaseError(
            path, f"labels {bad} outside the {layout} convention {sorted(allowed)}{hint}"
        )
    return seg8, counts


def detect_et_label(case: RawCase, seg: np.ndarray) -> RawCase:
    """Label convention from the seg's content when the case name does not tell.

    Names of the official releases fix the convention (2021: ET=4, 2023+: ET=3). For other
    names the layout is only a guess from the modality names, so a seg holding 4 but not 3
    (or 3 but not 4) decides. Returns ``case`` itself or a copy with the detected ``et_label``.
    """
    if case.cohort is not None:
        return case
    has3, has4 = bool((seg == 3).any()), bool((seg == 4).any())
    et = 4 if has4 and not has3 else 3 if has3 and not has4 else case.et_label
    return case if et == case.et_label else dataclasses.replace(case, et_label=et)


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
        case = detect_et_label(case, vols["seg"].data)
        try:
            seg, counts = check_labels(vols["seg"].data, case.seg, case.et_label, case.layout)
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
