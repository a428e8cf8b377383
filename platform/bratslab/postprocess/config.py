"""Configs of the post-processing stage: the thresholds applied to a label map, and the search.

:class:`PostprocessConfig` is what ``postprocess.json`` holds (under ``"config"``), what a
registered model version carries as its ``bratslab.postprocess`` tag, and what ``bratslab
predict`` applies. Every default is a no-op.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import ConfigError, StrictModel, validate
from bratslab.data.profiles import get_profile

CONFIG_KEY = "config"  # postprocess.json: {"config": {...thresholds...}, "fit": {...report...}}
DEFAULT_CANDIDATES = (0, 10, 25, 50, 100, 150, 250, 500)
# The candidate sizes are voxel counts for a full BraTS volume (240 × 240 × 155 at 1 mm).
REFERENCE_VOXELS = 240 * 240 * 155


class PostprocessConfig(StrictModel):
    """Minimum connected-component sizes (voxels, 26-connectivity) per region.

    Sizes are measured on the prediction before anything is removed, so the result does not
    depend on the order of the steps. A component of region R with fewer than
    ``min_size_<r>`` voxels is deleted (its voxels become background). Of the ET components
    that are kept, those with fewer than ``et_to_ncr_below`` voxels become NCR (label 1): they
    stay in the tumour core, as BraTS winning entries do with small enhancing spots.

    For the models of another profile (post-treatment glioma: ET, NETC, SNFH, RC, TC, WT),
    ``profile`` names it and ``min_size`` holds a size per region, applied the same way.
    """

    min_size_wt: int = Field(default=0, ge=0, description="Delete WT components below (voxels).")
    min_size_tc: int = Field(default=0, ge=0, description="Delete TC components below (voxels).")
    min_size_et: int = Field(default=0, ge=0, description="Delete ET components below (voxels).")
    et_to_ncr_below: int = Field(
        default=0, ge=0, description="Relabel kept ET components below this size as NCR (1)."
    )
    profile: str | None = Field(
        default=None,
        description="A challenge profile whose regions min_size names (e.g. brats2024-gli: et, "
        "netc, snfh, rc, tc, wt), for its models; null: the WT/TC/ET fields above.",
    )
    min_size: dict[str, int] = Field(
        default_factory=dict,
        description="Per region of profile: delete its components below (voxels); their "
        "voxels become background.",
    )

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, v: str | None) -> str | None:
        return None if v is None else get_profile(v).name  # ValueError listing the known names

    @model_validator(mode="after")
    def _check_profile(self) -> PostprocessConfig:
        if self.profile is None:
            if self.min_size:
                raise ValueError("min_size names a profile's regions: set profile too")
            return self
        prof = get_profile(self.profile)
        if unknown := sorted(set(self.min_size) - set(prof.regions)):
            raise ValueError(
                f"min_size: {unknown} are not regions of {prof.name} ({', '.join(prof.regions)})"
            )
        if any(v < 0 for v in self.min_size.values()):
            raise ValueError("min_size values must be >= 0")
        if self.min_size_wt or self.min_size_tc or self.min_size_et or self.et_to_ncr_below:
            raise ValueError(f"the WT/TC/ET thresholds do not apply to profile {prof.name}")
        return self

    @property
    def is_noop(self) -> bool:
        legacy = (self.min_size_wt, self.min_size_tc, self.min_size_et, self.et_to_ncr_below)
        return not any(legacy) and not any(self.min_size.values())

    def summary(self) -> str:
        """One line for logs: the non-zero thresholds, or ``none``."""
        values = {k: v for k, v in self.model_dump().items() if k not in ("profile", "min_size")}
        values.update({f"min_size_{r}": v for r, v in self.min_size.items()})
        items = [f"{k}={v}" for k, v in values.items() if v]
        return ", ".join(items) or "none"


class FitConfig(StrictModel):
    """How :func:`bratslab.postprocess.fit.fit_thresholds` searches."""

    candidates: list[int] = Field(
        default=list(DEFAULT_CANDIDATES),
        min_length=1,
        description="Candidate minimum sizes (voxels at the full BraTS volume size; 0 = keep).",
    )
    scale: Literal["auto"] | float = Field(
        default="auto",
        description="Multiply the candidates by this; auto: the cases' linear size relative to "
        "a 240x240x155 volume (cube root of the voxel ratio), at most 1.",
    )
    passes: int = Field(default=2, ge=1, description="Coordinate-wise passes over the params.")
    challenge: str = Field(default="gli", description="Lesion-wise parameters (d, T).")
    min_gain: float = Field(
        default=1e-6, ge=0.0, description="A change must raise the objective by more than this."
    )
    stress: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Stressed copies of each validation case to fit on besides the case "
        "itself: small copies of its tumour pasted in, then a strong scanner shift (bias "
        "field, Rician noise, thick slices, contrast curves, gamma). Clean validation cases "
        "show neither the small false positives of shifted scans nor small true lesions, so "
        "thresholds fitted on them alone stay at 0.",
    )

    @model_validator(mode="after")
    def _check(self) -> FitConfig:
        if any(c < 0 for c in self.candidates):
            raise ValueError(f"candidates must be >= 0, got {self.candidates}")
        if not isinstance(self.scale, str) and self.scale <= 0:
            raise ValueError(f"scale must be > 0 or 'auto', got {self.scale}")
        return self


def load_config_file(path: str | Path) -> PostprocessConfig:
    """Thresholds from a JSON file: the output of ``bratslab postprocess fit`` (the ``"config"``
    entry) or a bare :class:`PostprocessConfig` object.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not JSON, or invalid thresholds (the message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such post-processing file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return config_from_data(data, str(path))


def config_from_data(data: Any, source: str) -> PostprocessConfig:
    """:class:`PostprocessConfig` from parsed JSON (either form of :func:`load_config_file`)."""
    if isinstance(data, dict) and CONFIG_KEY in data:
        data = data[CONFIG_KEY]
        source = f"{source} ({CONFIG_KEY})"
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: expected a JSON object of thresholds, got {kind}")
    return validate(PostprocessConfig, data, source)


__all__ = [
    "CONFIG_KEY",
    "DEFAULT_CANDIDATES",
    "FitConfig",
    "PostprocessConfig",
    "config_from_data",
    "load_config_file",
]
