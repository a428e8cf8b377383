"""Options of ``bratslab predict`` (sliding window, TTA, outputs, post-processing)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bratslab.config import StrictModel
from bratslab.inference.tta_path import TTA_PATH_PATTERN
from bratslab.postprocess.config import PostprocessConfig


class PredictConfig(StrictModel):
    """Options of ``bratslab predict``."""

    tta: Literal["none", "flips", "flips+rot90"] = Field(
        default="flips", description="Test-time augmentation: none, 8 flips, or 16 flips+rot90."
    )
    tta_path: str = Field(
        default="auto",
        pattern=TTA_PATH_PATTERN,
        description="How TTA views run: auto (measured fastest on this machine, cached), naive, "
        "perview, batched or batched:K; the same probabilities whichever.",
    )
    overlap: float = Field(default=0.5, ge=0.0, lt=1.0, description="Sliding-window overlap.")
    sw_batch_size: int = Field(default=1, ge=1, description="Windows per model call (× TTA).")
    threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Probability threshold of region models."
    )
    save_probabilities: bool = Field(
        default=False, description="Also write {case}_prob.nii.gz (X, Y, Z, C)."
    )
    uncertainty: bool = Field(
        default=False, description="Also write {case}_std.nii.gz: std over TTA/ensemble passes."
    )
    prob_dtype: Literal["uint8", "float32"] = Field(
        default="uint8",
        description="Probability/uncertainty maps as float32, or uint8 with scl_slope 1/255 "
        "(4x smaller; readers' get_fdata() still returns values in [0, 1]). NIfTI-1 has no "
        "float16.",
    )
    amp: bool = Field(default=True, description="Autocast: bf16 on CPU, fp16 on CUDA.")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    threads: int = Field(default=1, ge=1, description="CPUs (torch threads) per prediction actor.")
    workers: int = Field(
        default=0,
        ge=0,
        description="Prediction actors at most, one case each at a time (0: no cap).",
    )
    overwrite: bool = Field(default=False, description="Redo cases whose output exists.")
    postprocess: Literal["model", "none"] | PostprocessConfig = Field(
        default="model",
        description="Post-processing of the label maps: 'model' applies the thresholds the "
        "registered model version carries (`bratslab postprocess fit`; a local checkpoint has "
        "none), 'none' skips it, or explicit thresholds.",
    )
