"""A tiny input cannot make validation allocate what its headers declare.

The case: four modalities and a seg, each a 512 x 512 x 256 float32 volume of zeros (inside
every header limit), about 1.2 MB per ``.nii.gz`` as nibabel writes it. Before a streaming
screen, ``data validate`` held all five (1.3 GB) before saying "image is all zeros"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

CASE = "BraTS-GLI-00000-000"
PEAK_LIMIT_MB = 300

# Runs the command as its only child and prints that child's peak RSS (ru_maxrss: KiB on Linux).
_MEASURE = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr, "peak_mb": peak}))
"""


def _zero_case(root: Path, nonzero_voxel: bool = False) -> Path:
    folder = root / CASE
    folder.mkdir(parents=True)
    first = folder / f"{CASE}-t1n.nii.gz"
    data = np.zeros((512, 512, 256), np.float32)
    data[256, 256, 128] = nonzero_voxel  # 1.0 (a label 1 in the seg too) or 0
    nib.save(nib.Nifti1Image(data, np.eye(4)), first)
    for m in ("t1c", "t2w", "t2f", "seg"):
        shutil.copy(first, folder / f"{CASE}-{m}.nii.gz")
    return folder


def test_a_zero_filled_case_fails_as_all_zeros_in_bounded_memory(tmp_path, bratslab_home):
    folder = _zero_case(tmp_path / "raw")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 << 20
    bratslab = str(Path(sys.executable).parent / "bratslab")
    cmd = [bratslab, "data", "validate", str(tmp_path / "raw"), "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, timeout=600
    )
    result = json.loads(proc.stdout)
    assert result["rc"] == 1, result
    assert result["peak_mb"] < PEAK_LIMIT_MB, result["peak_mb"]
    failures = json.loads(result["out"])["failures"]
    named = {(Path(f["file"]).name, f["reason"]) for f in failures}
    modalities = ("t1n", "t1c", "t2w", "t2f")
    assert named == {(f"{CASE}-{m}.nii.gz", "image is all zeros") for m in modalities}
    assert "Traceback" not in result["err"]


def test_a_nearly_empty_case_at_an_implausible_size_is_refused_unloaded(tmp_path, bratslab_home):
    """One non-zero voxel per volume: not all zeros, but 1.3 GB declared in a few MB."""
    folder = _zero_case(tmp_path / "raw", nonzero_voxel=True)
    bratslab = str(Path(sys.executable).parent / "bratslab")
    cmd = [bratslab, "data", "validate", str(tmp_path / "raw"), "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, timeout=600
    )
    result = json.loads(proc.stdout)
    assert result["rc"] == 1 and result["peak_mb"] < PEAK_LIMIT_MB, result
    (failure,) = json.loads(result["out"])["failures"]
    assert failure["file"] == str(folder)
    assert "MiB of voxels in" in failure["reason"] and "implausible size" in failure["reason"]
