"""Synthesise both layouts, preprocess on a real local Ray, kill a run midway and resume.

The interrupted run is a real ``bratslab data preprocess`` process that joins the session's Ray
instance and is killed with SIGKILL once its first case is written; the resumed run must leave
exactly the bytes of an uninterrupted run.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bratslab.data import preprocess_tasks as runner
from bratslab.data.config import PreprocessConfig
from bratslab.data.discovery import discover_cases
from bratslab.data.labels import from_store_labels
from bratslab.data.preprocess import restore_to_source
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.store import Store
from bratslab.data.synth import synthesize_dataset
from bratslab.data.validate import load_case

pytestmark = pytest.mark.integration

SHAPE = (64, 64, 48)
CFG = PreprocessConfig(min_size=32)  # what `bratslab data preprocess --min-size 32` uses


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synthesize_dataset(root / "gli2023", 3, "brats2023", seed=1, shape=SHAPE, unlabeled=1)
    synthesize_dataset(root / "gli2021", 3, "brats2021", seed=2, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory, ray_cluster) -> Path:
    out = tmp_path_factory.mktemp("reference")
    report = run_preprocess(raw, out, CFG, workers=2, progress=False)
    assert report.exit_code == 0, report.failures
    assert len(report.processed) == 6
    return out


def test_ray_preprocess_outputs(raw, reference):
    s = Store(reference)
    assert len(s) == 6
    assert {c["layout"] for c in s.manifest["cases"]} == {"brats2021", "brats2023"}
    assert s.labeled_ids() == sorted(set(s.case_ids()) - {"BraTS-GLI-00002-000"})
    raw_cases = {c.id: c for c in discover_cases(raw)}
    import nibabel as nib

    for cid in s.case_ids():
        meta = s.meta(cid)
        x = s.load_x(cid)
        assert x.shape == (5, *meta.shape) and all(n >= 32 for n in meta.shape)
        assert x.dtype == np.float16 and np.isfinite(x).all()
        assert np.load(reference / f"{cid}_meta.npy").tolist() == [
            meta.bbox_start,
            meta.bbox_end,
            list(SHAPE),
        ]
        if not meta.has_label:
            assert not (reference / f"{cid}_y.npy").exists()
            continue
        y = s.load_y(cid)
        assert set(np.unique(y)) <= {0, 1, 2, 3}
        src = np.asarray(nib.load(raw_cases[cid].seg).dataobj)
        assert meta.et_label == (4 if cid.startswith("BraTS2021") else 3)
        back = from_store_labels(restore_to_source(np.asarray(y[0]), meta), meta.et_label)
        np.testing.assert_array_equal(back, src)  # predictions can go back exactly
    assert json.loads((reference / "failures.json").read_text()) == []


def test_killed_run_resumes_to_identical_bytes(raw, reference, ray_cluster, tmp_path):
    out = tmp_path / "store"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    bratslab = Path(sys.executable).with_name("bratslab")  # the console script of this venv
    cmd = [str(bratslab), "data", "preprocess", str(raw), str(out), "--workers", "1",
           "--min-size", "32"]  # fmt: skip
    # A session of its own, so the kill reaches the driver and nothing of the shared cluster.
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*_x.npy")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done_at_kill = len(list(out.glob("*_meta.json")))
    assert done_at_kill < 6, "the run finished before it could be killed"
    assert not (out / "dataset.json").exists()
    # Atomic writes: every array under its final name is complete and loadable.
    for p in out.glob("*.npy"):
        np.load(p)

    report = run_preprocess(raw, out, CFG, workers=2, progress=False)
    assert report.exit_code == 0
    assert len(report.processed) + len(report.skipped) == 6
    assert len(report.processed) >= 6 - done_at_kill - 1  # at most one case finished late
    assert not list(out.glob(".*.tmp"))
    assert _snapshot(out) == _snapshot(reference)

    # A third run finds everything complete and rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_preprocess(raw, out, CFG, workers=2, progress=False)
    assert again.processed == [] and len(again.skipped) == 6
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def _break_cases(root: Path) -> dict[str, str]:
    """Three SSA cases, each with one bad file; returns {case id: expected reason text}."""
    import nibabel as nib

    folders = synthesize_dataset(root, 3, "brats2023", seed=3, shape=SHAPE, cohort="SSA")
    t1n = folders[0] / f"{folders[0].name}-t1n.nii.gz"
    rgb = np.ones(SHAPE, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))
    nib.save(nib.Nifti1Image(rgb, nib.load(t1n).affine), t1n)
    t2w = folders[1] / f"{folders[1].name}-t2w.nii.gz"
    img = nib.load(t2w)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.complex64), img.affine), t2w)
    seg = folders[2] / f"{folders[2].name}-seg.nii.gz"
    raw = bytearray(gzip.decompress(seg.read_bytes()))
    struct.pack_into("<f", raw, 80, float("nan"))  # pixdim[1]
    seg.write_bytes(gzip.compress(bytes(raw), mtime=0))
    return {
        folders[0].name: "unsupported voxel type RGB",
        folders[1].name: "unsupported voxel type complex64",
        folders[2].name: "voxel size (pixdim) [nan, 1.0, 1.0]",
    }


def test_ray_quarantines_what_validate_rejects_and_fast_cast_is_identical(
    raw, reference, tmp_path, monkeypatch
):
    """Bad cases fail on Ray workers with validate's very reasons, the good ones go on; the
    workers' torch float16 cast (forced on here) writes the bytes of the numpy cast."""
    mixed = tmp_path / "raw"
    shutil.copytree(raw, mixed)
    expected = _break_cases(mixed / "ssa")
    validated = sorted(
        (f.to_dict() for c in discover_cases(mixed) for f in load_case(c)[1]),
        key=lambda f: (f["case"], f["file"], f["reason"]),
    )
    assert {f["case"] for f in validated} == set(expected)

    monkeypatch.setattr(runner, "FAST_CAST_MIN_CASES", 1)  # every worker casts through torch
    out = tmp_path / "store"
    report = runner.run_preprocess(mixed, out, CFG, workers=2, progress=False)
    assert report.exit_code == 1
    assert [f.to_dict() for f in report.failures] == validated
    for cid, text in expected.items():
        (reason,) = [f.reason for f in report.failures if f.case == cid]
        assert text in reason, reason
    assert len(report.processed) == 6
    for cid in report.processed:  # the reference was built with numpy's cast
        for suffix in ("_x.npy", "_y.npy", "_meta.npy"):
            if (reference / f"{cid}{suffix}").exists():
                ref_bytes = (reference / f"{cid}{suffix}").read_bytes()
                assert (out / f"{cid}{suffix}").read_bytes() == ref_bytes, cid + suffix
