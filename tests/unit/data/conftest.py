"""Fixtures for the data-stage unit tests: tiny synthetic cases written as real NIfTI files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bratslab.data.layout import MODALITIES, case_file_name
from bratslab.data.synth import brats_affine, synthesize_case

SHAPE = (40, 44, 32)


class CaseFactory:
    """Writes small, valid BraTS cases and lets a test break one file on purpose."""

    def __init__(self, root: Path):
        self.root = root

    def write(
        self,
        case_id: str,
        layout: str = "brats2023",
        *,
        seed: int = 0,
        shape=SHAPE,
        spacing=(1.0, 1.0, 1.0),
        with_seg: bool = True,
        root: Path | None = None,
    ) -> Path:
        et = 4 if layout == "brats2021" else 3
        images, seg, affine = synthesize_case((seed, 0), shape, spacing, et)
        folder = (root or self.root) / case_id
        folder.mkdir(parents=True, exist_ok=True)
        items = {**images, **({"seg": seg} if with_seg else {})}
        for key, arr in items.items():
            nib.save(nib.Nifti1Image(arr, affine), folder / case_file_name(case_id, key, layout))
        return folder

    @staticmethod
    def path(folder: Path, key: str, layout: str = "brats2023") -> Path:
        return folder / case_file_name(folder.name, key, layout)

    @staticmethod
    def replace(path: Path, data: np.ndarray, affine=None) -> None:
        """Overwrite one file with other voxels (and optionally another affine)."""
        aff = affine if affine is not None else nib.load(path).affine
        nib.save(nib.Nifti1Image(data, aff), path)


@pytest.fixture
def cases(tmp_path) -> CaseFactory:
    return CaseFactory(tmp_path / "raw")


@pytest.fixture
def tiny_volume():
    """One in-memory synthetic case: images dict, seg (ET=3), affine."""
    return synthesize_case((0, 0), SHAPE, (1.0, 1.0, 1.0), 3)


def gz_bytes(data: np.ndarray, affine=None) -> bytes:
    img = nib.Nifti1Image(
        data, brats_affine(data.shape[:3], (1, 1, 1)) if affine is None else affine
    )
    return gzip.compress(img.to_bytes(), mtime=0)


__all__ = ["MODALITIES", "SHAPE", "CaseFactory", "gz_bytes"]
