"""The NIfTI-1 header of :mod:`bratslab.data.nifti`, checked before any voxel byte is read:
the limits a valid header may declare, the errors, and :func:`parse_header`.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MAX_DIM = 2048
"""Voxels per axis; BraTS is 240x240x155, anything this large is a broken header."""


MAX_VOXELS = 64 * 1024 * 1024
"""Voxels per image (7x a BraTS volume; 512x512x256 fits)."""


MAX_BYTES = 256 * 1024 * 1024
"""Bytes of voxel data per image (MAX_VOXELS float32 voxels)."""


MAX_VOX_OFFSET = 1 << 24
"""Header + extensions; larger is a broken header."""


HEADER_BYTES = 352
"""A NIfTI-1 header (348 bytes) plus the 4-byte extension flag."""


DEFLATE_MAX_RATIO = 1032
"""Deflate cannot inflate one byte into more than this (258-byte matches, 2-bit codes)."""


# Extensions (between byte 352 and vox_offset) are skipped, never parsed: nibabel would try to
# read them from the 352 header bytes and fail.
_NO_EXTENSIONS = b"\0\0\0\0"


class NiftiError(Exception):
    """A problem with one file; ``str()`` is ``"<file>: <reason>"``."""

    def __init__(self, file: str | Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason


@dataclass
class NiftiHeaderInfo:
    """A checked header and the layout of the voxel data it declares.

    Attributes:
        header: the nibabel :class:`~nibabel.Nifti1Header` (after nibabel's benign fixes).
        shape: ``(X, Y, Z)``; trailing singleton dimensions dropped.
        dtype: voxel dtype as stored (byte order included); a real scalar type.
        offset: ``vox_offset``, where the voxel data start.
        nvox: number of voxels.
    """

    header: nib.Nifti1Header
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int
    nvox: int

    @property
    def nbytes(self) -> int:
        """Bytes of voxel data."""
        return self.nvox * self.dtype.itemsize

    @property
    def size(self) -> int:
        """Bytes the (uncompressed) file must hold: header, extensions and voxel data."""
        return self.offset + self.nbytes


def _dtype_name(header: nib.Nifti1Header) -> str:
    code = int(header["datatype"])
    try:
        return f"{header.get_value_label('datatype')} (datatype code {code})"
    except Exception:  # an unknown code has no label
        return f"datatype code {code}"


def _check_raw_fields(head: bytes, path: Path) -> nib.Nifti1Header:
    """Parse the header without nibabel's silent fixes and check what they would hide."""
    if len(head) < 348:
        raise NiftiError(path, f"truncated: {len(head)} bytes, shorter than a NIfTI header")
    sizes = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    if 540 in sizes:
        raise NiftiError(path, "unreadable: NIfTI-2 header (only NIfTI-1 is supported)")
    if 348 not in sizes:
        raise NiftiError(path, f"unreadable: not a NIfTI-1 header (sizeof_hdr={sizes[0]})")
    try:
        raw = nib.Nifti1Header.from_fileobj(io.BytesIO(head[:348] + _NO_EXTENSIONS), check=False)
    except Exception as e:  # nibabel raises HeaderDataError / ValueError / struct errors
        raise NiftiError(path, f"unreadable: not a NIfTI-1 header ({e})") from e
    magic = bytes(raw["magic"].item()).rstrip(b"\x00")
    if magic != b"n+1":
        what = "the header of a .hdr/.img pair" if magic == b"ni1" else "not NIfTI-1"
        raise NiftiError(path, f"unreadable: magic {magic!r} ({what}; expected b'n+1')")
    return raw


def _check_geometry(raw: nib.Nifti1Header, path: Path, max_dim: int, max_voxels: int):
    """Shape ``(X, Y, Z)`` and voxel count, from ``dim``; raises before anything is sized."""
    dim = raw["dim"]
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise NiftiError(path, f"absurd header: dim[0]={ndim}")
    shape = tuple(int(s) for s in dim[1 : ndim + 1])
    if any(s < 1 or s > max_dim for s in shape):
        raise NiftiError(path, f"absurd header dimensions {shape} (each must be 1..{max_dim})")
    nvox = int(np.prod(shape, dtype=np.int64))
    if nvox > max_voxels:
        raise NiftiError(
            path, f"absurd header dimensions {shape}: {nvox} voxels (at most {max_voxels})"
        )
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise NiftiError(path, f"not a 3-D image: shape {shape}")
    return shape, nvox


def _check_values(raw: nib.Nifti1Header, path: Path) -> None:
    """Voxel sizes and intensity scaling must be finite (and sizes positive)."""
    zooms = [float(z) for z in raw["pixdim"][1:4]]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise NiftiError(path, f"voxel size (pixdim) {zooms} must be finite and positive")
    slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
    # nibabel reads slope 0 or NaN as "no scaling" (the NIfTI rule); infinities are broken.
    if np.isinf(slope) or (slope != 0 and np.isfinite(slope) and not np.isfinite(inter)):
        raise NiftiError(path, f"invalid intensity scaling scl_slope={slope}, scl_inter={inter}")


def parse_header(
    head: bytes,
    path: str | Path,
    *,
    max_dim: int = MAX_DIM,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> NiftiHeaderInfo:
    """Check the first :data:`HEADER_BYTES` bytes of a NIfTI-1 file (inflated, for ``.gz``).

    Raises:
        NiftiError: not a single-file NIfTI-1 header, absurd or non-3-D dimensions, more than
            ``max_voxels``/``max_bytes``, a voxel type that is not a real scalar (RGB, complex,
            unknown), non-finite or non-positive voxel size, broken scaling, bad ``vox_offset``,
            no finite affine.
    """
    path = Path(path)
    raw = _check_raw_fields(head, path)
    shape, nvox = _check_geometry(raw, path, max_dim, max_voxels)
    try:
        dtype = raw.get_data_dtype()
    except Exception as e:
        raise NiftiError(path, f"unsupported voxel type {_dtype_name(raw)} ({e})") from e
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise NiftiError(
            path, f"unsupported voxel type {_dtype_name(raw)}: only real scalar images"
        )
    if nvox * dtype.itemsize > max_bytes:
        raise NiftiError(
            path,
            f"header declares {nvox * dtype.itemsize} bytes of voxel data ({shape} {dtype}), "
            f"more than the {max_bytes} allowed",
        )
    vox_offset = float(raw["vox_offset"])
    if not (HEADER_BYTES <= vox_offset <= MAX_VOX_OFFSET and vox_offset.is_integer()):
        raise NiftiError(path, f"absurd header: vox_offset={vox_offset:g}")
    _check_values(raw, path)
    try:
        # Fields are sane now; nibabel's remaining fixes are benign (bitpix, qfac of 0 → 1).
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(head[:348] + _NO_EXTENSIONS), check=True)
        affine = header.get_best_affine()
    except Exception as e:
        raise NiftiError(path, f"unreadable: invalid NIfTI-1 header ({e})") from e
    if affine is None or not np.isfinite(affine).all():
        raise NiftiError(path, "header has no valid affine")
    return NiftiHeaderInfo(header, shape, dtype, int(vox_offset), nvox)
