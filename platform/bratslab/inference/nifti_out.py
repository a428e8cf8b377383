"""Prediction outputs as NIfTI: file names, segmentations and probability/uncertainty maps.

Every file is written atomically (temp name in the same folder, then ``os.replace``) with the
source case's affine and header, so outputs overlay the input scans exactly. Per case:
``{case}.nii.gz`` (labels, uint8), ``{case}_prob.nii.gz`` and ``{case}_std.nii.gz``
(``(X, Y, Z, C)``, channels last).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bratslab import atomic

PROB_DTYPES = ("uint8", "float32")


def output_paths(out_dir: str | Path, case_id: str) -> dict[str, Path]:
    """``{"seg", "prob", "std"}`` → the output files of ``case_id`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return {
        "seg": out_dir / f"{case_id}.nii.gz",
        "prob": out_dir / f"{case_id}_prob.nii.gz",
        "std": out_dir / f"{case_id}_std.nii.gz",
    }


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, header, slope: float = 1.0
) -> None:
    """Write ``data`` as ``.nii.gz`` with the source ``affine``/``header``, atomically.

    Values are stored as they are (``scl_slope`` 1, or ``slope`` for quantised maps), whatever
    scaling the source header had.
    """
    import nibabel as nib

    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(slope, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    # Level 1: segmentations compress well anyway, probability maps are big and slow at 9.
    atomic.write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1))


def write_map(path: Path, values: np.ndarray, affine, header, dtype: str = "uint8") -> None:
    """``(C, X, Y, Z)`` values in [0, 1] → a 4-D NIfTI ``(X, Y, Z, C)`` (channels last).

    ``dtype="uint8"`` quantises to 1/255 steps with ``scl_slope`` 1/255 (4x smaller; readers'
    ``get_fdata()`` still returns values in [0, 1]); ``"float32"`` stores the values as they are.
    """
    if dtype not in PROB_DTYPES:
        raise ValueError(f"probability map dtype must be one of {PROB_DTYPES}, not {dtype!r}")
    values = np.moveaxis(values, 0, -1)
    if dtype == "uint8":
        q = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
        write_nifti(path, q, affine, header, slope=1.0 / 255.0)
    else:
        write_nifti(path, values.astype(np.float32), affine, header)


__all__ = ["PROB_DTYPES", "output_paths", "write_map", "write_nifti"]
