"""Every bad-input class, built for real with nibabel and byte surgery on the files."""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest

from bratslab.data.discovery import discover_cases
from bratslab.data.nifti import NiftiError, load_nifti
from bratslab.data.validate import load_case

CID = "BraTS-GLI-00001-000"


def _only_failures(root):
    (case,) = discover_cases(root)
    loaded, failures = load_case(case)
    assert loaded is None
    return failures


def _reasons(failures):
    return [(f.file.rsplit("/", 1)[-1], f.reason) for f in failures]


def test_valid_case_loads(cases):
    cases.write(CID)
    (case,) = discover_cases(cases.root)
    loaded, failures = load_case(case)
    assert failures == []
    assert loaded.shape == (40, 44, 32)
    assert all(v.dtype == np.int16 for v in loaded.images.values())
    assert loaded.seg.dtype == np.uint8
    assert set(np.flatnonzero(loaded.label_counts)) <= {0, 1, 2, 3}
    assert set(loaded.sha256) == {"t1n", "t1c", "t2w", "t2f", "seg"}


def test_missing_modality(cases):
    folder = cases.write(CID)
    cases.path(folder, "t1c").unlink()
    reason = "missing modality t1c (found t1n, t2w, t2f)"
    assert ("BraTS-GLI-00001-000", reason) in _reasons(_only_failures(cases.root))


def test_empty_file(cases):
    folder = cases.write(CID)
    cases.path(folder, "t2w").write_bytes(b"")
    assert _reasons(_only_failures(cases.root)) == [(f"{CID}-t2w.nii.gz", "empty file")]


def test_unreadable_not_nifti(cases):
    folder = cases.write(CID)
    cases.path(folder, "t2w").write_bytes(gzip.compress(b"hello, not an image" * 40))
    (f,) = _only_failures(cases.root)
    assert f.file.endswith("t2w.nii.gz") and f.reason.startswith("unreadable")


def test_plain_bytes_with_gz_suffix(cases):
    folder = cases.write(CID)
    cases.path(folder, "t2w").write_bytes(b"\x00" * 400)
    (f,) = _only_failures(cases.root)
    assert "not a gzip file" in f.reason


def test_truncated_gzip(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t1n")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and "truncated gzip stream" in f.reason


def test_truncated_uncompressed_nifti(cases):
    folder = cases.write(CID)
    gz = cases.path(folder, "t1n")
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    nii = folder / f"{CID}-t1n.nii"
    nii.write_bytes(raw[:-1000])
    (f,) = _only_failures(cases.root)
    assert f.file == str(nii) and f.reason.startswith("truncated: voxel data needs")


def test_damaged_crc_trailer_is_detected(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "seg")
    raw = bytearray(p.read_bytes())
    raw[-8] ^= 0xFF  # first byte of the CRC32 trailer; the deflate data stay intact
    p.write_bytes(bytes(raw))
    # nibabel alone does not notice: its lazy proxy reads the voxels without the trailer check.
    assert np.asarray(nib.load(p).dataobj).shape == (40, 44, 32)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and "damaged CRC" in f.reason


def test_corrupt_deflate_stream(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t2f")
    raw = bytearray(p.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    (f,) = _only_failures(cases.root)
    assert "corrupt gzip" in f.reason


def _patch_header(path, offset, fmt, value):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, raw, offset, *value)
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize(
    ("dims", "match"),
    [((3, 30000, 44, 32), "absurd header dimensions"), ((3, 2000, 2000, 2000), "voxels")],
)
def test_absurd_header_dims_rejected_before_allocating(cases, dims, match):
    folder = cases.write(CID)
    p = cases.path(folder, "t1c")
    _patch_header(p, 40, "<4h", dims)  # dim[0..3] live at byte 40 of the NIfTI-1 header
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and match in f.reason


def test_non_3d_image(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t1c")
    cases.replace(p, np.ones((40, 44, 32, 2), dtype=np.int16))
    (f,) = _only_failures(cases.root)
    assert "not a 3-D image" in f.reason


def test_trailing_singleton_dim_is_3d(tmp_path):
    p = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 1), dtype=np.int16), np.eye(4)), p)
    assert load_nifti(p).data.shape == (5, 6, 7)


def test_shape_mismatch(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t2w")
    cases.replace(p, np.ones((40, 44, 30), dtype=np.int16))
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and "shape (40, 44, 30) differs from t1n (40, 44, 32)" in f.reason


def test_seg_affine_mismatch(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "seg")
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 5.0
    cases.replace(p, np.asarray(img.dataobj), aff)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and "affine differs" in f.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_voxels(cases, bad):
    folder = cases.write(CID)
    p = cases.path(folder, "t1n")
    data = np.asarray(nib.load(p).dataobj).astype(np.float32)
    data[3, 4, 5] = bad
    cases.replace(p, data)
    (f,) = _only_failures(cases.root)
    assert f.reason == "1 NaN/Inf voxels"


@pytest.mark.parametrize(
    ("layout", "label", "match"),
    [
        # (a BraTS-GLI case holding 4 is post-treatment glioma, see test_data_profiles.py)
        ("brats2023", 4, r"labels \[4\] outside the brats2023 convention \[0, 1, 2, 3\]"),
        ("brats2021", 3, r"labels \[3\] outside the brats2021 convention \[0, 1, 2, 4\]"),
        ("brats2023", 7, r"labels \[7\] outside"),
    ],
)
def test_labels_outside_convention(cases, layout, label, match):
    cid = "BraTS-SSA-00001-000" if layout == "brats2023" else "BraTS2021_00001"
    folder = cases.write(cid, layout)
    p = cases.path(folder, "seg", layout)
    seg = np.asarray(nib.load(p).dataobj).copy()
    seg[0, 0, 0] = label
    cases.replace(p, seg)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p)
    import re

    assert re.search(match, f.reason), f.reason
    if label in (3, 4):
        assert "other BraTS convention" in f.reason


def test_non_integer_labels(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "seg")
    seg = np.asarray(nib.load(p).dataobj).astype(np.float32)
    seg[0, 0, 0] = 1.5
    cases.replace(p, seg)
    (f,) = _only_failures(cases.root)
    assert "non-integer" in f.reason


def test_all_zero_image(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t2f")
    cases.replace(p, np.zeros((40, 44, 32), dtype=np.int16))
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and f.reason == "image is all zeros"


def test_every_bad_file_of_a_case_is_reported(cases):
    folder = cases.write(CID)
    cases.path(folder, "t1n").write_bytes(b"")
    raw = cases.path(folder, "t2w").read_bytes()
    cases.path(folder, "t2w").write_bytes(raw[:100])
    failures = _only_failures(cases.root)
    assert {f.file.rsplit("-", 1)[-1] for f in failures} == {"t1n.nii.gz", "t2w.nii.gz"}


def test_read_nifti_error_names_file(tmp_path):
    p = tmp_path / "missing.nii.gz"
    with pytest.raises(NiftiError, match="missing.nii.gz: unreadable"):
        load_nifti(p)


def test_scaled_float_header_is_applied(tmp_path):
    p = tmp_path / "s.nii.gz"
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, p)
    vol = load_nifti(p)
    np.testing.assert_array_equal(vol.data, np.asanyarray(nib.load(p).dataobj))


def test_negative_labels(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "seg")
    seg = np.asarray(nib.load(p).dataobj).astype(np.int16)
    seg[1, 1, 1] = -1
    cases.replace(p, seg)
    (f,) = _only_failures(cases.root)
    assert "values from -1 to" in f.reason


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_gzip_checks_with_either_inflate_backend(tmp_path, monkeypatch, backend):
    """The CRC/truncation/corruption checks hold whether or not ISA-L is installed."""
    import zlib

    from bratslab.data import nifti as N

    if backend == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(N, "_inflate", isal_zlib)
    else:
        monkeypatch.setattr(N, "_inflate", zlib)
    img = nib.Nifti1Image(np.arange(4000, dtype=np.int16).reshape(10, 20, 20), np.eye(4))
    raw = gzip.compress(img.to_bytes(), mtime=0)
    p = tmp_path / "x.nii.gz"
    p.write_bytes(raw)
    assert load_nifti(p).data.shape == (10, 20, 20)
    crc = bytearray(raw)
    crc[-7] ^= 0x01
    p.write_bytes(bytes(crc))
    with pytest.raises(NiftiError, match="damaged CRC"):
        load_nifti(p)
    p.write_bytes(raw[:-20])
    with pytest.raises(NiftiError, match="truncated gzip stream"):
        load_nifti(p)
    bad = bytearray(raw)
    bad[12:40] = b"\xff" * 28
    p.write_bytes(bytes(bad))
    with pytest.raises(NiftiError, match="corrupt gzip"):
        load_nifti(p)
    plain = img.to_bytes()
    members = [gzip.compress(plain[i : i + 3000], mtime=0) for i in range(0, len(plain), 3000)]
    p.write_bytes(b"".join(members) + b"\0" * 16)  # several members, then zero padding
    vol = load_nifti(p)
    np.testing.assert_array_equal(vol.data, np.asanyarray(img.dataobj))
    p.write_bytes(raw + raw)  # valid gzip, but twice the bytes the header declares
    with pytest.raises(NiftiError, match="more than the 8352 bytes its header declares"):
        load_nifti(p)


def test_more_data_than_the_header_declares_is_refused(tmp_path):
    """A decompression bomb behind a small header stops at the declared size."""
    img = nib.Nifti1Image(np.ones((10, 20, 20), dtype=np.int16), np.eye(4))
    p = tmp_path / "bomb.nii.gz"
    p.write_bytes(gzip.compress(img.to_bytes() + b"\0" * (8 << 20), compresslevel=1))
    with pytest.raises(NiftiError, match="more than the .* bytes its header declares"):
        load_nifti(p)


@pytest.mark.parametrize(
    ("tokens", "seg_et", "expected"),
    [
        # 2023-style names with 4 but no 3: ambiguous (2021 ET or RC), see test_data_profiles.py
        (("t1n", "t1c", "t2w", "t2f"), 3, 3),
        (("t1", "t1ce", "t2", "flair"), 3, 3),  # 2021-style names, 2023 labels
        (("t1", "t1ce", "t2", "flair"), 4, 4),
    ],
)
def test_label_convention_detected_for_unofficial_names(tmp_path, tokens, seg_et, expected):
    from bratslab.data.synth import synthesize_case

    images, seg, affine = synthesize_case((0, 0), (40, 44, 32), et_label=seg_et)
    assert (seg == seg_et).any()
    folder = tmp_path / "patient7"
    folder.mkdir()
    for tok, m in zip(tokens, ("t1n", "t1c", "t2w", "t2f"), strict=True):
        nib.save(nib.Nifti1Image(images[m], affine), folder / f"patient7_{tok}.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), folder / "patient7_seg.nii.gz")
    (case,) = discover_cases(tmp_path)
    assert case.cohort is None
    loaded, failures = load_case(case)
    assert failures == [] and loaded.case.et_label == expected
    assert loaded.label_counts[expected] == int((seg == seg_et).sum())


def test_official_names_fix_the_convention(cases):
    folder = cases.write("BraTS2021_00001", "brats2021")
    p = cases.path(folder, "seg", "brats2021")
    seg = np.asarray(nib.load(p).dataobj).copy()
    seg[seg == 4] = 3
    cases.replace(p, seg)
    (f,) = _only_failures(cases.root)
    assert "outside the brats2021 convention" in f.reason


RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
RGBA32 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (RGB24, "RGB (datatype code 128)"),
        (RGBA32, "RGBA (datatype code 2304)"),
        (np.complex64, "complex64 (datatype code 32)"),
        (np.complex128, "complex128 (datatype code 1792)"),
    ],
)
def test_voxel_types_that_are_not_real_scalars_are_named(cases, dtype, name):
    """RGB used to crash validation (TypeError), complex silently lost its imaginary part."""
    folder = cases.write(CID)
    p = cases.path(folder, "t1n")
    data = np.ones((40, 44, 32), dtype=dtype)
    cases.replace(p, data)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p)
    assert f.reason == f"unsupported voxel type {name}: only real scalar images"


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -1.0])
def test_non_finite_or_non_positive_voxel_size(cases, bad):
    """A NaN pixdim used to pass validation and crash preprocessing ("not JSON compliant")."""
    folder = cases.write(CID)
    p = cases.path(folder, "t2w")
    _patch_header(p, 84, "<f", (bad,))  # pixdim[2] (pixdim[0..7] start at byte 76)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p)
    assert f.reason == f"voxel size (pixdim) [1.0, {bad}, 1.0] must be finite and positive"


def test_intensities_beyond_float32_are_rejected(cases):
    folder = cases.write(CID)
    p = cases.path(folder, "t1c")
    data = np.asarray(nib.load(p).dataobj).astype(np.float64)
    data[1, 2, 3] = -1e300
    cases.replace(p, data)
    (f,) = _only_failures(cases.root)
    assert f.file == str(p) and f.reason == "intensities up to 1e+300 exceed the float32 range"


def test_trailing_data_in_an_uncompressed_file(cases):
    folder = cases.write(CID)
    gz = cases.path(folder, "t2f")
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    nii = folder / f"{CID}-t2f.nii"
    nii.write_bytes(raw + b"\xff" * 64)
    (f,) = _only_failures(cases.root)
    assert f.file == str(nii)
    assert f.reason == f"64 bytes of trailing data after the {len(raw)} bytes its header declares"


def test_load_case_never_raises_and_reports_every_file(cases, monkeypatch):
    """Even a reader bug becomes a failure naming the file; the other files are still checked."""
    from bratslab.data import validate as V

    folder = cases.write(CID)
    broken = cases.path(folder, "t2w")
    real = V.load_nifti

    def flaky(path, **kw):
        if path == broken:
            raise TypeError("boom")
        return real(path, **kw)

    monkeypatch.setattr(V, "load_nifti", flaky)
    cases.path(folder, "t1n").write_bytes(b"")
    assert _reasons(_only_failures(cases.root)) == [
        (f"{CID}-t1n.nii.gz", "empty file"),
        (f"{CID}-t2w.nii.gz", "internal error while reading: TypeError: boom"),
    ]
