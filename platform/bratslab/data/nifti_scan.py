"""Check a ``.nii.gz`` by streaming it, before deciding to hold its voxels in memory.

A gzip file of a few hundred kB can declare 256 MiB of zeros within every header limit of
:mod:`bratslab.data.nifti`; loading the four modalities and the seg of such a case costs over a
GB before "image is all zeros" can be said. :func:`scan_nifti` reads the file through the same
guarded inflater in :data:`bratslab.data.nifti._OUT_CHUNK` pieces it does not keep, and counts
non-zero and non-finite voxels per piece, so memory stays at a few MiB whatever the header
says. :func:`needs_scan` picks the files worth the extra pass: those that inflate to much more
than their size on disk (a real BraTS modality inflates ~5-10x; a nearly empty volume
hundreds of times). Every check :func:`~bratslab.data.nifti.load_nifti` makes on the stream
(header, truncation, CRC trailers, excess data, NaN/Inf) is made here too, with the same
messages.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bratslab.data.nifti import _OUT_CHUNK, _GzipReader, read_header
from bratslab.data.nifti_header import (
    DEFLATE_MAX_RATIO,
    HEADER_BYTES,
    NiftiError,
    NiftiHeaderInfo,
    parse_header,
)

SCAN_MIN_BYTES = 32 << 20  # declared sizes below this load directly: small enough either way
SCAN_RATIO = 32  # inflating more than this many times the file size: stream-check it first


@dataclass
class NiftiScan:
    """What a streaming pass found: the header, and voxel counts (after intensity scaling)."""

    info: NiftiHeaderInfo
    nonzero: int
    nonfinite: int


def needs_scan(path: str | Path, limits: dict) -> NiftiHeaderInfo | None:
    """The checked header of ``path`` when it is a gzip file declaring more than
    :data:`SCAN_MIN_BYTES` and more than :data:`SCAN_RATIO` times its size; else None.

    Raises:
        NiftiError: the header itself is bad (the same message loading would give).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        size = os.stat(path).st_size
    except OSError as e:
        raise NiftiError(path, f"unreadable ({e.strerror or e})") from e
    if not gz:
        return None
    info = read_header(path, **limits)
    return info if info.size > max(SCAN_MIN_BYTES, SCAN_RATIO * size) else None


def _count(raw: bytes | memoryview, info: NiftiHeaderInfo, slope, inter) -> tuple[int, int]:
    """Non-zero and non-finite voxels of one whole-voxel piece of the data."""
    data = np.frombuffer(raw, dtype=info.dtype)
    if (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0):
        data = data.astype(np.float32) * np.float32(slope or 1.0) + np.float32(inter or 0.0)
    bad = int(np.count_nonzero(~np.isfinite(data))) if data.dtype.kind == "f" else 0
    return int(np.count_nonzero(data)), bad


def scan_nifti(path: str | Path, limits: dict) -> NiftiScan:
    """Stream a ``.nii.gz`` end to end in bounded memory; see the module docstring.

    Raises:
        NiftiError: as :func:`bratslab.data.nifti.load_nifti` would, naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            reader = _GzipReader(f, hashlib.sha256(), path)
            head = bytearray(HEADER_BYTES)
            info = parse_header(bytes(head[: reader.readinto(memoryview(head))]), path, **limits)
            if info.size > os.fstat(f.fileno()).st_size * DEFLATE_MAX_RATIO:
                raise NiftiError(path, f"truncated: header declares {info.size} bytes")
            slope, inter = info.header.get_slope_inter()
            scratch = memoryview(bytearray(_OUT_CHUNK))  # a multiple of every itemsize
            skip, left, nonzero, nonfinite = info.offset - HEADER_BYTES, info.nbytes, 0, 0
            while skip > 0:
                k = reader.readinto(scratch[: min(skip, _OUT_CHUNK)])
                if k == 0:
                    break
                skip -= k
            while left > 0 and skip == 0:
                k = reader.readinto(scratch[: min(left, _OUT_CHUNK)])
                if k == 0:
                    break
                whole = k - k % info.dtype.itemsize
                nz, bad = _count(scratch[:whole], info, slope, inter)
                nonzero, nonfinite, left = nonzero + nz, nonfinite + bad, left - k
            if left > 0 or skip > 0:
                held = info.size - skip - left
                raise NiftiError(
                    path, f"truncated: voxel data needs {info.size} bytes, the file holds {held}"
                )
            if reader.finish():
                raise NiftiError(
                    path, f"decompresses to more than the {info.size} bytes its header declares"
                )
    except OSError as e:
        raise NiftiError(path, f"unreadable ({e.strerror or e})") from e
    if nonfinite:
        raise NiftiError(path, f"{nonfinite} NaN/Inf voxels")
    return NiftiScan(info, nonzero, nonfinite)
