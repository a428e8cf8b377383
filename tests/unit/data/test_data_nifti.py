"""The guarded NIfTI loader: memory bounded by the header, exact sizes, bounded gzip inflation.

Files are real (nibabel or raw bytes) but small: a header claiming a huge image sits on a tiny
body, and tracemalloc shows the loader refused it without reading or allocating the body.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from bratslab.data.nifti import (
    MAX_BYTES,
    NiftiError,
    load_nifti,
    parse_header,
    read_header,
)

KIB, MIB = 1 << 10, 1 << 20
GZ_PEAK = 2 * MIB  # a refused .gz costs at most a read chunk (1 MiB) and the inflater's state


def _header_bytes(shape, dtype=np.int16) -> bytes:
    """The 352 bytes nibabel writes before the voxels of a ``shape`` ``dtype`` image."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0\0\0\0"


def _peak(fn) -> tuple[Exception | object, int]:
    """Run ``fn``; return (its result or the exception it raised, peak traced bytes)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_plain_huge_header_is_rejected_without_reading_the_body(tmp_path):
    """A 32767-voxel axis over a 4 MiB body: refused from the 352 header bytes alone."""
    p = tmp_path / "huge.nii"
    head = bytearray(_header_bytes((10, 10, 10)))
    struct.pack_into("<4h", head, 40, 3, 32767, 32767, 32767)
    p.write_bytes(bytes(head) + b"\0" * (4 * MIB))
    err, peak = _peak(lambda: load_nifti(p))
    assert isinstance(err, NiftiError) and "absurd header dimensions" in err.reason
    assert peak < 256 * KIB, peak  # reading the file whole would take 4 MiB


def test_plain_trailing_data_is_rejected_without_reading_it(tmp_path):
    """A valid image followed by 4 MiB of junk: the size check refuses it before any read."""
    img = nib.Nifti1Image(np.arange(1000, dtype=np.int16).reshape(10, 10, 10), np.eye(4))
    p = tmp_path / "junk.nii"
    p.write_bytes(img.to_bytes() + b"\x01" * (4 * MIB))
    err, peak = _peak(lambda: load_nifti(p))
    assert isinstance(err, NiftiError)
    assert (
        err.reason == f"{4 * MIB} bytes of trailing data after the 2352 bytes its header declares"
    )
    assert peak < 256 * KIB, peak


def test_plain_size_must_match_exactly(tmp_path):
    img = nib.Nifti1Image(np.arange(1000, dtype=np.int16).reshape(10, 10, 10), np.eye(4))
    raw = img.to_bytes()
    p = tmp_path / "x.nii"
    p.write_bytes(raw + b"\0")  # a single trailing byte is still junk
    with pytest.raises(NiftiError, match="1 bytes of trailing data"):
        load_nifti(p)
    p.write_bytes(raw[:-1])
    with pytest.raises(NiftiError, match="truncated: voxel data needs 2352 bytes, the file holds"):
        load_nifti(p)
    p.write_bytes(raw)
    vol = load_nifti(p)
    np.testing.assert_array_equal(vol.data, np.asanyarray(img.dataobj))
    assert vol.sha256 == hashlib.sha256(raw).hexdigest()


def test_gz_over_the_byte_limit_is_rejected_from_the_header(tmp_path):
    """512x512x250 float64 (524 MB) behind a tiny gzip: refused before inflating anything."""
    p = tmp_path / "bomb.nii.gz"
    head = _header_bytes((512, 512, 250), np.float64)
    p.write_bytes(gzip.compress(head + b"\0" * 1000, mtime=0))
    err, peak = _peak(lambda: load_nifti(p))
    assert isinstance(err, NiftiError)
    assert (
        f"524288000 bytes of voxel data ((512, 512, 250) float64), more than the {MAX_BYTES}"
        in (err.reason)
    )
    assert peak < GZ_PEAK, peak


def test_gz_declaring_more_than_deflate_can_hold_is_rejected_before_allocating(tmp_path):
    """200^3 int16 (16 MB) declared by a 1 KB gzip cannot be real: no 16 MB buffer is made."""
    p = tmp_path / "short.nii.gz"
    p.write_bytes(gzip.compress(_header_bytes((200, 200, 200)) + b"\0" * 1000, mtime=0))
    err, peak = _peak(lambda: load_nifti(p))
    assert isinstance(err, NiftiError) and "gzip file can hold" in err.reason, err
    assert peak < GZ_PEAK, peak


def test_gz_inflation_stops_near_the_declared_size(tmp_path):
    """64 MiB of zeros after a 40x44x32 int16 header: inflation stops, memory stays bounded."""
    body = np.ones((40, 44, 32), np.int16).tobytes(order="F")
    p = tmp_path / "bomb.nii.gz"
    raw = _header_bytes((40, 44, 32)) + body + b"\0" * (64 * MIB)
    p.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    assert p.stat().st_size < 256 * KIB
    err, peak = _peak(lambda: load_nifti(p))
    assert isinstance(err, NiftiError)
    assert (
        err.reason == f"decompresses to more than the {352 + len(body)} bytes its header declares"
    )
    assert peak < 12 * MIB, peak  # declared size + a few bounded chunks, not 64 MiB


def test_gz_roundtrip_hash_and_bounded_peak(tmp_path):
    data = np.random.default_rng(0).integers(-500, 500, (60, 50, 40)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.5, 1.0]))
    p = tmp_path / "ok.nii.gz"
    nib.save(img, p)
    vol, peak = _peak(lambda: load_nifti(p))
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.zooms, (1.0, 1.2, 2.5), rtol=1e-6)
    np.testing.assert_allclose(vol.affine, img.affine)
    assert vol.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert peak < data.nbytes + 6 * MIB, peak  # voxels + bounded read/inflate chunks


def test_limits_are_arguments(tmp_path):
    p = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), p)
    assert load_nifti(p).data.shape == (10, 10, 10)
    with pytest.raises(NiftiError, match=r"1000 voxels \(at most 999\)"):
        load_nifti(p, max_voxels=999)
    with pytest.raises(NiftiError, match="4000 bytes of voxel data .* more than the 3999"):
        load_nifti(p, max_bytes=3999)
    with pytest.raises(NiftiError, match=r"each must be 1\.\.9"):
        load_nifti(p, max_dim=9)


def test_big_endian_and_extensions_load_like_nibabel(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=">i4").reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4), nib.Nifti1Header(endianness=">"))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment" * 10))
    p = tmp_path / "be.nii"
    nib.save(img, p)
    ref = nib.load(p)
    raw = p.read_bytes()
    assert struct.unpack(">i", raw[:4])[0] == 348  # a big-endian header
    assert struct.unpack(">f", raw[108:112])[0] > 352  # voxels start after the extension
    vol = load_nifti(p)
    np.testing.assert_array_equal(vol.data, np.asanyarray(ref.dataobj))
    gz = tmp_path / "be.nii.gz"
    gz.write_bytes(gzip.compress(p.read_bytes(), mtime=0))
    np.testing.assert_array_equal(load_nifti(gz).data, vol.data)


def test_nifti2_and_pair_headers_are_named(tmp_path):
    p = tmp_path / "n2.nii"
    nib.save(nib.Nifti2Image(np.ones((2, 3, 4), np.int16), np.eye(4)), p)
    with pytest.raises(NiftiError, match="NIfTI-2 header"):
        load_nifti(p)
    raw = bytearray(nib.Nifti1Image(np.ones((2, 3, 4), np.int16), np.eye(4)).to_bytes())
    raw[344:348] = b"ni1\0"
    p.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match=r"\.hdr/\.img pair"):
        load_nifti(p)


def test_read_header_inflates_only_the_header(tmp_path):
    p = tmp_path / "h.nii.gz"
    raw = _header_bytes((40, 44, 32)) + b"\0" * (8 * MIB)  # wrong size: only load_nifti sees it
    p.write_bytes(gzip.compress(raw, mtime=0))
    info, peak = _peak(lambda: read_header(p))
    assert info.shape == (40, 44, 32) and info.dtype == np.int16 and info.offset == 352
    assert peak < GZ_PEAK, peak
    with pytest.raises(NiftiError, match="more than the"):
        load_nifti(p)


def test_parse_header_rejects_short_input(tmp_path):
    with pytest.raises(NiftiError, match="truncated: 100 bytes, shorter than a NIfTI header"):
        parse_header(b"\0" * 100, tmp_path / "x.nii")
