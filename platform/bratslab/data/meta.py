"""Per-case metadata: where a store array came from and how to put predictions back.

``{id}_meta.npy`` is a ``[3, 3]`` int64 array::

    [[x0, y0, z0],    # first voxel of the foreground box in the source volume (inclusive)
     [x1, y1, z1],    # end of the box (exclusive), so the crop is src[x0:x1, y0:y1, z0:z1]
     [X0, Y0, Z0]]    # original (source) shape

``{id}_meta.json`` (:class:`CaseMeta`) holds the same box plus the padding, the source affine,
zooms and NIfTI header, the layout and ET label, input files with sha256 and the stored dtype.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

META_FORMAT = "bratslab-case/1"


class CaseMeta(BaseModel):
    """Everything needed to map a store-space array back to the source NIfTI geometry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = Field(default=META_FORMAT, description="Schema tag of this file.")
    id: str = Field(description="Case id.")
    layout: str = Field(description="Source layout: brats2021 or brats2023.")
    cohort: str | None = Field(default=None, description="GLI/SSA/PED/MEN/MET when known.")
    et_label: int = Field(description="ET label in the source convention (3 or 4).")
    profile: str | None = Field(
        default=None,
        description="Challenge profile the seg was read in (None: the layout's 2021/2023 "
        "convention); its store labels are the profile's own values unless 2021/2023.",
    )
    has_label: bool = Field(description="Whether {id}_y.npy exists (the case had a seg).")
    original_shape: list[int] = Field(description="Source volume shape (X0, Y0, Z0), voxels.")
    bbox_start: list[int] = Field(description="Crop box start in source voxels (inclusive).")
    bbox_end: list[int] = Field(description="Crop box end in source voxels (exclusive).")
    pad_before: list[int] = Field(description="Zeros added before the crop on each axis.")
    pad_after: list[int] = Field(description="Zeros added after the crop on each axis.")
    shape: list[int] = Field(description="Stored spatial shape (X, Y, Z) = crop + pads.")
    affine: list[list[float]] = Field(description="Source 4x4 voxel→world affine (mm).")
    zooms: list[float] = Field(description="Source voxel size (mm) per axis.")
    header_b64: str = Field(description="The source NIfTI-1 header (348 bytes), base64.")
    channels: list[str] = Field(description="Channel names of {id}_x.npy.")
    dtype: str = Field(description="dtype of {id}_x.npy.")
    files: dict[str, dict[str, str]] = Field(
        description="Input key (t1n, t1c, t2w, t2f, seg) → {'path', 'sha256'}."
    )
    preprocess_hash: str = Field(description="PreprocessConfig.content_hash() used.")
    label_voxels: dict[str, int] = Field(
        default_factory=dict, description="Store label ('1','2','3') → voxel count."
    )
    intensity: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per modality stats of non-zero source voxels: mean, std, p00_5, p99_5, "
        "min, max; zscore_mean/zscore_std: what step 4 subtracted and divided by (after the "
        "optional percentile rescale).",
    )

    def header(self):
        """The source :class:`nibabel.Nifti1Header` (for writing predictions back)."""
        import io

        import nibabel as nib

        raw = base64.b64decode(self.header_b64)
        return nib.Nifti1Header.from_fileobj(io.BytesIO(raw))

    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    def meta_array(self) -> np.ndarray:
        """The ``(3, 3)`` int64 array of ``{id}_meta.npy`` (see module docstring)."""
        return np.array([self.bbox_start, self.bbox_end, self.original_shape], dtype=np.int64)


def as_meta(meta: CaseMeta | dict[str, Any]) -> CaseMeta:
    return meta if isinstance(meta, CaseMeta) else CaseMeta.model_validate(meta)


def restore_to_source(array: np.ndarray, meta: CaseMeta | dict[str, Any], fill=0) -> np.ndarray:
    """Undo padding and cropping: a store-space array back onto the source voxel grid.

    Args:
        array: ``(..., X, Y, Z)`` in store space (any dtype, any leading dims, e.g.
            ``(3, X, Y, Z)`` region probabilities or ``(X, Y, Z)`` labels).
        meta: the case's :class:`CaseMeta` (or its dict).
        fill: value outside the crop box (0: background).

    Returns:
        ``(..., X0, Y0, Z0)`` same dtype; exact inverse of crop+pad inside the box.
    """
    m = as_meta(meta)
    if tuple(array.shape[-3:]) != tuple(m.shape):
        raise ValueError(f"{m.id}: array spatial shape {array.shape[-3:]} != stored {m.shape}")
    inner = tuple(
        slice(b, s - a) for b, a, s in zip(m.pad_before, m.pad_after, m.shape, strict=True)
    )
    out = np.full(array.shape[:-3] + tuple(m.original_shape), fill, dtype=array.dtype)
    box = tuple(slice(s, e) for s, e in zip(m.bbox_start, m.bbox_end, strict=True))
    out[(Ellipsis, *box)] = array[(Ellipsis, *inner)]
    return out


def to_store_space(array: np.ndarray, meta: CaseMeta | dict[str, Any]) -> np.ndarray:
    """Source-space ``(..., X0, Y0, Z0)`` → store-space ``(..., X, Y, Z)`` (crop, then zero pad)."""
    m = as_meta(meta)
    box = tuple(slice(s, e) for s, e in zip(m.bbox_start, m.bbox_end, strict=True))
    pads = [(0, 0)] * (array.ndim - 3) + list(zip(m.pad_before, m.pad_after, strict=True))
    return np.pad(array[(Ellipsis, *box)], pads)
