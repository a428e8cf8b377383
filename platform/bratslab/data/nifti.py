"""Guarded NIfTI-1 reading: the header is checked before any voxel byte is read or allocated.

nibabel loads lazily: a truncated ``.nii.gz`` only fails at ``get_fdata()``, a damaged gzip CRC
goes unnoticed unless the whole stream is decompressed, NaN/Inf and NaN voxel sizes pass
silently, and a header can claim any size. :func:`load_nifti` reads a file exactly once and in
this order, so memory stays bounded by what a valid header may declare:

1. the first 352 bytes (for ``.gz``: only the first 352 *inflated* bytes) are parsed and
   checked: NIfTI-1 single file, 3-D, each axis ``1..max_dim``, at most ``max_voxels`` voxels
   and ``max_bytes`` bytes of voxel data, a real scalar voxel type (no RGB, no complex),
   finite positive voxel sizes, finite scaling and affine;
2. the size the header implies (``vox_offset + prod(shape) * itemsize``) is checked against
   the file: exact for ``.nii`` (a shorter file is truncated, a longer one has trailing data);
   for ``.gz`` against the most a deflate stream of that many bytes can hold;
3. only then is the voxel buffer allocated and filled; a ``.gz`` is inflated in bounded
   chunks that stop at the declared size, and read to its end so every member's CRC32 and
   length trailer is verified (more data than declared is refused);
4. float voxels are checked for NaN/Inf.

Header extensions (between byte 352 and ``vox_offset``) are read past, not kept. Only
NIfTI-1 is read (BraTS ships NIfTI-1); a NIfTI-2 file is refused by name.

Every problem is a :class:`NiftiError` naming the file; nothing else escapes for bad input.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab.data.nifti_header import (
    DEFLATE_MAX_RATIO,
    HEADER_BYTES,
    MAX_BYTES,
    MAX_DIM,
    MAX_VOXELS,
    NiftiError,
    NiftiHeaderInfo,
    parse_header,
)

try:  # ISA-L's inflate is ~1.6x faster than zlib's, same format and checks (optional)
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    _inflate = zlib


_READ_CHUNK = 1 << 20  # compressed bytes read at a time


_OUT_CHUNK = 1 << 22  # inflated bytes produced at a time (bounds the temporary copies)


_PROBE_BYTES = 1 << 24  # inflated past the declared size to tell corruption from excess


@dataclass
class NiftiVolume:
    """One decoded NIfTI image.

    Attributes:
        data: ``(X, Y, Z)`` voxels in the file's dtype (scaled to float32 if the header sets
            ``scl_slope``/``scl_inter``); Fortran-ordered.
        affine: ``(4, 4)`` float64 voxel → world (mm) transform (sform, else qform).
        zooms: voxel size in mm, ``(3,)``, finite and positive.
        header: the nibabel :class:`~nibabel.Nifti1Header` (348 bytes; extensions dropped).
        sha256: hash of the file as stored on disk (compressed bytes for ``.gz``).
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header: nib.Nifti1Header
    sha256: str


def _gzip_error(path: Path, e: Exception) -> NiftiError:
    msg = str(e)
    if any(t in msg.lower() for t in ("data check", "length check", "checksum")):
        return NiftiError(path, f"corrupt gzip: damaged CRC/length trailer ({msg})")
    return NiftiError(path, f"corrupt gzip stream ({msg})")


class _GzipReader:
    """Inflate a (possibly multi-member) gzip file in bounded chunks, hashing what it reads.

    Each member's CRC32 and length trailer are checked by the inflater when the member ends;
    zero bytes after the last member are tolerated (as gzip readers do).
    """

    def __init__(self, f, sha, path: Path):
        self.f, self.sha, self.path = f, sha, path
        self.d = _inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.pending = b""  # compressed bytes not yet given to self.d
        self.done = False  # the last member ended; only zero padding (if anything) followed

    def _read(self) -> bytes:
        chunk = self.f.read(_READ_CHUNK)
        self.sha.update(chunk)
        return chunk

    def _next_member(self) -> None:
        """After a member's end: start the next one, or finish at end of file."""
        rest = self.d.unused_data + self.pending
        padded = False
        while not rest.strip(b"\x00"):
            padded = padded or bool(rest)
            rest = self._read()
            if not rest:
                self.done = True
                return
        if padded:
            raise NiftiError(self.path, "corrupt gzip stream (data after zero padding)")
        self.d = _inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.pending = rest

    def readinto(self, out: memoryview) -> int:
        """Fill ``out`` with inflated bytes; fewer only when the stream ends. Returns the count."""
        got = 0
        try:
            while got < len(out):
                if self.d.eof:
                    self._next_member()
                    if self.done:
                        break
                if not self.pending:
                    self.pending = self._read()
                    if not self.pending:
                        raise NiftiError(self.path, "truncated gzip stream (file cut short)")
                chunk = self.d.decompress(self.pending, min(len(out) - got, _OUT_CHUNK))
                # At a member's end zlib leaves the rest in unused_data (and, stale, in the tail).
                self.pending = b"" if self.d.eof else self.d.unconsumed_tail
                out[got : got + len(chunk)] = chunk
                got += len(chunk)
        except (zlib.error, _inflate.error) as e:
            raise _gzip_error(self.path, e) from e
        return got

    def finish(self) -> bool:
        """Read to the end of the file, verifying every trailer; True if more data followed.

        When more data follows, up to :data:`_PROBE_BYTES` more are inflated (and dropped):
        damage in the middle of a stream often inflates to garbage before zlib notices, and
        "corrupt gzip" is the more useful report then. A bomb costs at most that much CPU.
        """
        if not self.readinto(memoryview(bytearray(1))):
            return False
        scratch = memoryview(bytearray(_OUT_CHUNK))
        probed = 0
        while probed < _PROBE_BYTES and not self.done:
            probed += self.readinto(scratch)
        return True


def _load_gz(f, path: Path, file_size: int, sha, limits: dict):
    """Header, then the voxel bytes ``(nbytes,)`` uint8 of a gzip file (see the module doc)."""
    reader = _GzipReader(f, sha, path)
    head = bytearray(HEADER_BYTES)
    n = reader.readinto(memoryview(head))
    info = parse_header(bytes(head[:n]), path, **limits)
    if info.size > file_size * DEFLATE_MAX_RATIO:
        raise NiftiError(
            path,
            f"truncated: header declares {info.size} bytes, more than a {file_size}-byte gzip "
            "file can hold",
        )
    skip = info.offset - HEADER_BYTES  # extensions: read (and verified) but not kept
    while skip > 0:
        k = reader.readinto(memoryview(bytearray(min(skip, _OUT_CHUNK))))
        if k == 0:
            break
        skip -= k
    buf = np.empty(info.nbytes, dtype=np.uint8)
    got = reader.readinto(memoryview(buf)) if skip == 0 else 0
    if got < info.nbytes:
        held = info.size - skip - (info.nbytes - got)
        raise NiftiError(
            path, f"truncated: voxel data needs {info.size} bytes, the file holds {held}"
        )
    if reader.finish():
        raise NiftiError(
            path, f"decompresses to more than the {info.size} bytes its header declares"
        )
    return info, buf


def _load_plain(f, path: Path, file_size: int, sha, limits: dict):
    """Header, then the voxel bytes ``(nbytes,)`` uint8 of an uncompressed file."""
    head = f.read(HEADER_BYTES)
    info = parse_header(head, path, **limits)
    if file_size != info.size:
        if file_size < info.size:
            reason = f"truncated: voxel data needs {info.size} bytes, the file holds {file_size}"
        else:
            reason = (
                f"{file_size - info.size} bytes of trailing data after the {info.size} bytes "
                "its header declares"
            )
        raise NiftiError(path, reason)
    sha.update(head)
    sha.update(f.read(info.offset - HEADER_BYTES))
    buf = np.empty(info.nbytes, dtype=np.uint8)
    view, got = memoryview(buf), 0
    while got < info.nbytes:
        k = f.readinto(view[got:])
        if not k:
            raise NiftiError(path, f"truncated: the file shrank while being read ({got} bytes)")
        got += k
    sha.update(buf)
    return info, buf


def load_nifti(
    path: str | Path,
    *,
    max_dim: int = MAX_DIM,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
    check_finite: bool = True,
) -> NiftiVolume:
    """Read and check one ``.nii``/``.nii.gz`` file completely, memory bounded by its header.

    Peak memory is the declared voxel bytes (at most ``max_bytes``) plus a few MiB of chunks;
    a file is rejected from its header alone when that would exceed the limits.

    Args:
        path: a NIfTI-1 single file, gzip-compressed or not (the content decides, not the
            suffix; a ``.gz`` name with plain content is an error).
        max_dim, max_voxels, max_bytes: limits per axis, voxel count and voxel bytes.
        check_finite: reject float images holding NaN/Inf voxels.

    Returns:
        :class:`NiftiVolume`; ``data`` ``(X, Y, Z)`` (trailing singleton dimensions dropped).

    Raises:
        NiftiError: naming ``path`` and the problem (empty, unreadable, truncated, trailing
            data, corrupt gzip, absurd header, unsupported voxel type, bad voxel size, NaN/Inf).
    """
    path = Path(path)
    limits = {"max_dim": max_dim, "max_voxels": max_voxels, "max_bytes": max_bytes}
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size == 0:
                raise NiftiError(path, "empty file")
            magic = f.read(2)
            f.seek(0)
            if magic == b"\x1f\x8b":
                info, buf = _load_gz(f, path, file_size, sha, limits)
            elif path.name.lower().endswith(".gz"):
                raise NiftiError(path, "not a gzip file despite the .gz suffix")
            else:
                info, buf = _load_plain(f, path, file_size, sha, limits)
    except OSError as e:
        raise NiftiError(path, f"unreadable ({e.strerror or e})") from e
    header = info.header
    data = buf.view(info.dtype).reshape(info.shape, order="F")
    slope, inter = header.get_slope_inter()
    if (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0):
        data = data.astype(np.float32) * np.float32(slope or 1.0) + np.float32(inter or 0.0)
    if check_finite and data.dtype.kind == "f" and not np.isfinite(data).all():
        n = int(np.count_nonzero(~np.isfinite(data)))
        raise NiftiError(path, f"{n} NaN/Inf voxels")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    return NiftiVolume(
        data=data,
        affine=header.get_best_affine(),
        zooms=zooms,
        header=header,
        sha256=sha.hexdigest(),
    )


def read_header(
    path: str | Path,
    *,
    max_dim: int = MAX_DIM,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> NiftiHeaderInfo:
    """Check only the header of a file (for ``.gz`` only its first bytes are inflated).

    Cheap enough to check shapes of many files before loading any; the voxel data and the
    gzip trailers are not checked (use :func:`load_nifti` for that).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            if not head:
                raise NiftiError(path, "empty file")
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                reader = _GzipReader(f, hashlib.sha256(), path)
                buf = bytearray(HEADER_BYTES)
                head = bytes(buf[: reader.readinto(memoryview(buf))])
            elif path.name.lower().endswith(".gz"):
                raise NiftiError(path, "not a gzip file despite the .gz suffix")
    except OSError as e:
        raise NiftiError(path, f"unreadable ({e.strerror or e})") from e
    return parse_header(head, path, max_dim=max_dim, max_voxels=max_voxels, max_bytes=max_bytes)
