"""The training-time augmentation of a job's ``data.augment`` section: :class:`AugmentConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel
from bratslab.data.layout import MODALITIES


class AugmentConfig(StrictModel):
    """Patch augmentation (MONAI ``Rand*d`` transforms); probabilities are per patch.

    The transforms model scanner shift (nnU-Net's recipe plus MR-specific ones). Every
    transform added for scanner shift defaults to probability 0 (off), so small jobs keep their
    speed; real-data jobs switch them on. Intensity transforms touch the modalities only, never
    the foreground-mask channel or the labels.
    """

    enabled: bool = Field(default=True, description="Apply augmentation to training patches.")
    on: Literal["loader", "device"] = Field(
        default="loader",
        description="Where the recipe runs. loader: per patch on the CPU (MONAI), in the loader "
        "thread or the Ray Data actors. device: the loader only samples patches (larger by a "
        "margin where rotation/scaling needs one) and each training worker augments the whole "
        "batch in torch on its own device (CUDA when present), the same recipe.",
    )
    flip_prob: float = Field(default=0.5, ge=0, le=1, description="Flip probability per axis.")
    rotate_prob: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Random rotation probability. Rotation and scaling share one resampling "
        "(RandAffined); each is drawn independently with its own probability.",
    )
    rotate_range_deg: float = Field(
        default=30.0, ge=0, le=180, description="Max rotation about each axis (degrees)."
    )
    scale_prob: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Random scaling probability (in the same resampling as the rotation).",
    )
    scale_range: float = Field(
        default=0.15,
        ge=0,
        lt=1,
        description="Scale factor drawn from 1 ± this value, independently per axis.",
    )
    noise_prob: float = Field(default=0.15, ge=0, le=1, description="Gaussian noise probability.")
    noise_std: float = Field(
        default=0.1,
        ge=0,
        description="Largest std of the Gaussian noise (z units); each patch draws its std "
        "uniformly from [0, noise_std].",
    )
    intensity_prob: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Per-modality intensity scale (×1 ± 0.25) and shift (± 0.1) probability "
        "(the coarse transform that brightness_*, channel_scale_* and contrast_* refine).",
    )
    gamma_prob: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Random gamma probability (RandAdjustContrastd; mean and std retained).",
    )
    gamma_range: tuple[float, float] = Field(
        default=(0.7, 1.5), description="Range of the gamma exponent (both gamma transforms)."
    )
    gamma_invert_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of gamma on the inverted image (dark structures get the "
        "curve bright ones get otherwise), mean and std retained, as nnU-Net does.",
    )
    bias_field_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of a smooth multiplicative bias field (RandBiasFieldd), one "
        "field for all modalities, applied to the brain as a non-negative magnitude image.",
    )
    bias_field_coeff: float = Field(
        default=0.1,
        gt=0,
        description="Polynomial coefficients of the log bias field drawn from ± this value "
        "(0.1 gives fields of roughly ×0.6 to ×1.5 across a patch).",
    )
    bias_field_degree: int = Field(
        default=3, ge=1, le=6, description="Degree of the bias field's Legendre polynomials."
    )
    rician_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of Rician noise (RandRicianNoised, low-SNR magnitude images), "
        "applied to the brain as a non-negative magnitude image.",
    )
    rician_std: float = Field(
        default=0.1,
        gt=0,
        description="Largest std of the Rician noise's Gaussian parts (z units); each "
        "modality draws its std uniformly from [0, rician_std].",
    )
    blur_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Gaussian smoothing probability (RandGaussianSmoothd).",
    )
    blur_sigma: tuple[float, float] = Field(
        default=(0.5, 1.0), description="Range of the smoothing sigma per axis (voxels)."
    )
    lowres_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Low-resolution simulation probability: down-sample (nearest) and "
        "up-sample back (trilinear), like nnU-Net's SimulateLowResolutionTransform.",
    )
    lowres_zoom: tuple[float, float] = Field(
        default=(0.5, 1.0),
        description="Range of the down-sampling factor (1/3 mimics 3 mm slices on a 1 mm grid).",
    )
    lowres_axes: Literal["one", "all"] = Field(
        default="one",
        description="one: down-sample one random axis (thick slices); all: every axis by the "
        "same factor (RandSimulateLowResolutiond, nnU-Net's choice).",
    )
    brightness_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of one multiplicative brightness factor for all modalities "
        "(RandScaleIntensityd).",
    )
    brightness_range: float = Field(
        default=0.25, ge=0, lt=1, description="Brightness factor drawn from 1 ± this value."
    )
    channel_scale_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of one intensity factor per modality "
        "(RandScaleIntensityd channel_wise).",
    )
    channel_scale_range: float = Field(
        default=0.25, ge=0, lt=1, description="Per-modality factor drawn from 1 ± this value."
    )
    contrast_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Contrast probability: scale each modality about its mean, clipped to its "
        "range (RandScaleIntensityFixedMeand, nnU-Net's ContrastAugmentationTransform).",
    )
    contrast_range: float = Field(
        default=0.25, ge=0, lt=1, description="Contrast factor drawn from 1 ± this value."
    )

    histogram_shift_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability of a random monotone intensity curve per modality over the "
        "brain (RandHistogramShift, one curve drawn for each modality): tissue contrasts "
        "change relative to each other, as between scanners, field strengths and contrast "
        "doses (e.g. weaker enhancement on T1c).",
    )
    histogram_shift_points: tuple[int, int] = Field(
        default=(5, 10),
        description="Range of the curve's number of control points (more points: more "
        "irregular curves).",
    )

    lesion_paste_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability, per patch that holds tumour, of pasting shrunken copies of "
        "that tumour elsewhere in the brain (tumour copy-paste): small lesions and satellites "
        "that the training cases lack.",
    )
    lesion_paste_zoom: tuple[float, float] = Field(
        default=(0.25, 0.6),
        description="Range of the copies' size factor (per axis) relative to the tumour.",
    )
    lesion_paste_count: tuple[int, int] = Field(
        default=(1, 3), description="Range of the number of copies pasted into one patch."
    )

    lesion_contrast_prob: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability, per patch that holds tumour, of changing how far each "
        "tumour sub-region (NCR, ED, ET) stands out from the normal brain in each modality, "
        "as contrast doses, field strengths and protocols do (e.g. weak enhancement on T1c).",
    )
    lesion_contrast_range: tuple[float, float] = Field(
        default=(0.25, 1.25),
        description="Range of the factor on a sub-region's difference from the normal brain's "
        "median (1 keeps it; one factor per sub-region and modality).",
    )
    lesion_contrast_labels: list[Literal["ncr", "ed", "et"]] = Field(
        default=["ncr", "ed", "et"],
        min_length=1,
        description="Sub-regions whose contrast changes; the others keep theirs (e.g. [et]: "
        "only the enhancement varies, so oedema keeps telling tumour from normal brain).",
    )
    lesion_contrast_modalities: list[str] = Field(
        default=list(MODALITIES),
        min_length=1,
        description="Modalities (canonical names) in which it changes (e.g. [t1c]: the "
        "contrast agent's dose and timing).",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data):
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("lesion_paste_count")
    @classmethod
    def _check_count(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not 1 <= lo <= hi:
            raise ValueError(f"lesion_paste_count needs 1 <= low <= high, not {list(v)}")
        return v

    @field_validator("lesion_contrast_modalities")
    @classmethod
    def _check_modalities(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
        return v

    @field_validator("histogram_shift_points")
    @classmethod
    def _check_points(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not 3 <= lo <= hi:
            raise ValueError(f"histogram_shift_points needs 3 <= low <= high, not {list(v)}")
        return v

    @field_validator(
        "gamma_range", "blur_sigma", "lowres_zoom", "lesion_paste_zoom", "lesion_contrast_range"
    )
    @classmethod
    def _check_range(cls, v: tuple[float, float], info) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError(f"{info.field_name} needs 0 < low <= high, not {list(v)}")
        if info.field_name == "lowres_zoom" and hi > 1:
            raise ValueError(f"lowres_zoom factors must be at most 1, not {list(v)}")
        return v
