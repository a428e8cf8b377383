"""``data validate`` and ``data preprocess`` agree: the same cases fail, for the same reasons.

Both read cases through ``validate.load_case``; preprocessing must quarantine exactly what
validation rejects, and one bad case must never stop the others.
"""

from __future__ import annotations

import gzip
import json
import struct

import nibabel as nib
import numpy as np

from bratslab.data.discovery import discover_cases
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.store import FAILURES
from bratslab.data.validate import load_case

CFG = PreprocessConfig(min_size=[48, 48, 48], num_folds=2)


def _patch_gz(path, offset, fmt, *values):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


def _bad_dataset(cases):
    """Two good cases and one case per kind of bad file; returns {case id: expected text}."""
    expected = {}
    for i in (0, 1):
        cases.write(f"BraTS-GLI-0000{i}-000", seed=i)

    def bad(n: int, key: str, text: str):
        cid = f"BraTS-GLI-001{n:02d}-000"
        folder = cases.write(cid, seed=10 + n)
        expected[cid] = text
        return cases.path(folder, key)

    p = bad(0, "t1n", "unsupported voxel type RGB")
    cases.replace(p, np.ones((40, 44, 32), np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])))
    p = bad(1, "t2w", "unsupported voxel type complex64")
    cases.replace(p, np.asarray(nib.load(p).dataobj).astype(np.complex64))
    p = bad(2, "seg", "voxel size (pixdim) [nan, 1.0, 1.0]")
    _patch_gz(p, 80, "<f", float("nan"))
    p = bad(3, "t1c", "exceed the float32 range")
    data = np.asarray(nib.load(p).dataobj).astype(np.float64)
    data[0, 0, 0] = 1e39
    cases.replace(p, data)
    p = bad(4, "t2f", "absurd header dimensions")
    _patch_gz(p, 40, "<4h", 3, 32767, 32767, 32767)
    p = bad(5, "t1n", "bytes of trailing data")
    nii = p.with_name(p.name[: -len(".gz")])
    nii.write_bytes(gzip.decompress(p.read_bytes()) + b"junk")
    p.unlink()
    p = bad(6, "t2w", "NaN/Inf voxels")
    data = np.asarray(nib.load(p).dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    cases.replace(p, data)
    return expected


def test_validate_and_preprocess_reject_the_same_cases_for_the_same_reasons(cases, tmp_path):
    expected = _bad_dataset(cases)

    validated = []
    for case in discover_cases(cases.root):  # what `data validate` does, case by case
        _, failures = load_case(case)
        validated += [f.to_dict() for f in failures]
    by_case = {}
    for f in validated:
        by_case.setdefault(f["case"], []).append(f["reason"])
    assert set(by_case) == set(expected)
    for cid, text in expected.items():
        assert len(by_case[cid]) == 1 and text in by_case[cid][0], (cid, by_case[cid])

    out = tmp_path / "store"
    report = run_preprocess(cases.root, out, CFG, use_ray=False, progress=False)
    assert report.processed == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert report.quarantined == sorted(expected)
    key = lambda f: (f["case"], f["file"], f["reason"])  # noqa: E731
    assert [f.to_dict() for f in report.failures] == sorted(validated, key=key)
    assert json.loads((out / FAILURES).read_text()) == sorted(validated, key=key)
    assert report.exit_code == 1
