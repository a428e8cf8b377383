"""How raw cases become store arrays: :class:`PreprocessConfig` (``bratslab data preprocess``)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel
from bratslab.data.layout import MODALITIES


class PreprocessConfig(StrictModel):
    """How raw cases become store arrays: the six BraTS preprocessing steps, each switchable.

    The steps, in order: (1) stack ``modalities``; (2) crop to the foreground box;
    (3) optional percentile rescale; (4) channel-wise z-score over non-zero voxels;
    (5) symmetric zero padding up to ``min_size``; (6) the foreground mask as the last channel.
    No resampling: anisotropic spacing is kept and recorded (zooms in each case's meta).
    """

    modalities: list[str] = Field(
        default=list(MODALITIES),
        description="Step 1: modalities stacked as channels, in this order (canonical names).",
    )
    crop_foreground: bool = Field(
        default=True,
        description="Step 2: crop to the smallest box holding a non-zero voxel of any modality.",
    )
    percentile_rescale: bool = Field(
        default=False,
        description="Step 3: clip non-zero voxels to [percentile_low, percentile_high] and "
        "rescale them to [0, rescale_max]; background stays 0.",
    )
    percentile_low: float = Field(default=2.0, ge=0, lt=100, description="Lower percentile (%).")
    percentile_high: float = Field(default=98.0, gt=0, le=100, description="Upper percentile (%).")
    rescale_max: float = Field(default=255.0, gt=0, description="Top of the rescaled range.")
    zscore: bool = Field(
        default=True,
        description="Step 4: per channel, subtract the mean and divide by the std of its "
        "non-zero voxels; background stays 0.",
    )
    min_size: list[int] = Field(
        default=[128, 128, 128],
        description="Step 5: pad symmetrically with zeros up to at least this size (voxels, "
        "X Y Z); 0 on an axis disables padding there.",
    )
    foreground_channel: bool = Field(
        default=True,
        description="Step 6: append the foreground mask (1 where any modality is non-zero).",
    )
    dtype: Literal["float16", "float32"] = Field(
        default="float16",
        description="Storage dtype of {id}_x.npy. float16 halves I/O; z-scored values are "
        "small, so its ~3 significant digits lose nothing a network can use.",
    )
    num_folds: int = Field(default=5, ge=1, description="Folds of the k-fold split.")
    split_seed: int = Field(default=0, description="Seed of the deterministic fold assignment.")
    patch_multiple: int = Field(
        default=16,
        ge=1,
        description="Suggested patch sides are multiples of this (2^downsamplings of the net).",
    )
    patch_voxel_budget: int = Field(
        default=128**3, ge=1, description="Upper bound on the suggested patch's voxel count."
    )

    @field_validator("min_size", mode="before")
    @classmethod
    def _expand_min_size(cls, v):
        if isinstance(v, int):
            return [v, v, v]
        return v

    @field_validator("min_size")
    @classmethod
    def _check_min_size(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(s < 0 for s in v):
            raise ValueError("min_size needs three sizes >= 0 (X Y Z voxels)")
        return v

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(m not in MODALITIES for m in v):
            raise ValueError(f"modalities must be distinct names from {list(MODALITIES)}")
        return v

    @model_validator(mode="after")
    def _check_percentiles(self) -> PreprocessConfig:
        if self.percentile_low >= self.percentile_high:
            raise ValueError("percentile_low must be below percentile_high")
        return self

    @property
    def channels(self) -> list[str]:
        """Channel names of ``{id}_x.npy``."""
        return list(self.modalities) + (["mask"] if self.foreground_channel else [])

    def content_hash(self) -> str:
        """sha256 of the settings that change the per-case arrays (not splits or patch size)."""
        keys = (
            "modalities",
            "crop_foreground",
            "percentile_rescale",
            "percentile_low",
            "percentile_high",
            "rescale_max",
            "zscore",
            "min_size",
            "foreground_channel",
            "dtype",
        )
        d = self.model_dump()
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
