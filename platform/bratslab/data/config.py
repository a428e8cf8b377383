"""The data stage's configs: ``PreprocessConfig`` (raw → store, every step switchable), and the
training job's ``data`` section (``DataSection``, with its ``AugmentConfig``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import ConfigError, StrictModel
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


class DataSection(StrictModel):
    """Which preprocessed store and fold to train on, and how patches are drawn."""

    store: str = Field(
        description="Preprocessed store folder (dataset.json inside). A relative path means "
        "the folder of that name in the current directory if it exists there, otherwise under "
        "$BRATSLAB_HOME; it is resolved once, when the job is loaded, and the log says which. "
        "Or s3://bucket/prefix: synced into a node-local cache ($BRATSLAB_STORE_CACHE, default "
        "$BRATSLAB_HOME/cache/stores) on every node that trains, each file checked against "
        "the manifest's sha256."
    )
    fold: int = Field(default=0, ge=0, description="Cross-validation fold from the store.")
    foreground_oversample: float = Field(
        default=1 / 3,
        ge=0,
        le=1,
        description="Fraction of patches centred on a tumour voxel (nnU-Net uses 1/3).",
    )
    max_val_cases: int | None = Field(
        default=None, ge=1, description="Validate on at most this many of the fold's cases."
    )
    prefetch_batches: int = Field(
        default=2,
        ge=0,
        description="Batches prepared ahead for each worker: by its loader thread (loader: "
        "thread), or fetched ahead from Ray Data (loader: ray; iter_torch_batches).",
    )
    loader: Literal["thread", "ray"] = Field(
        default="thread",
        description="Who samples and augments training patches. thread: one background "
        "thread in each Train worker (no start-up cost; enough for small patches). ray: a "
        "Ray Data pipeline (case rows -> patches on a pool of CPU actors, loader_cpus per "
        "worker) streamed to the workers through Ray Train's dataset sharding; for 128^3 "
        "patches with augmentation, where one thread cannot keep a GPU busy.",
    )
    loader_cpus: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="loader: ray only. CPUs of patch-making actors per Train worker "
        "(fractions allowed, > 0): the pool has ceil(loader_cpus * num_workers) actors "
        "sharing loader_cpus * num_workers CPUs. The cluster needs these CPUs on top of the "
        "workers' own.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-patch augmentation."
    )

    def locate_store(self) -> tuple[Path | str, str]:
        """``(the store, where it was found)``: an absolute folder and ``"as given"`` (an
        absolute path), ``"the current folder"`` or ``"$BRATSLAB_HOME"``; or, for an
        ``s3://bucket/prefix`` store, that URI (normalised, not fetched) and ``"object
        storage"``. A URI stays a URI so every node syncs its own copy (:meth:`store_path`).

        Raises:
            ConfigError: the folder is in neither place, or holds no ``dataset.json`` (the
                message names every path tried); or the URI is malformed or not ``s3://``.
        """
        from bratslab.data.remote import is_remote, parse_uri
        from bratslab.settings import get_settings

        if is_remote(self.store):
            return str(parse_uri(self.store)), "object storage"
        p = Path(self.store).expanduser()
        if p.is_absolute():
            candidates = [(p, "as given")]
        else:
            home = get_settings().home
            candidates = [(p.absolute(), "the current folder"), (home / p, "$BRATSLAB_HOME")]
        for path, where in candidates:
            if path.is_dir():
                if not (path / "dataset.json").is_file():
                    raise ConfigError(
                        f"data.store {self.store!r}: {path} is not a preprocessed store "
                        "(no dataset.json); build one with `bratslab data preprocess RAW STORE`"
                    )
                return path, where
        tried = " or ".join(str(path) for path, _ in candidates)
        raise ConfigError(
            f"data.store {self.store!r}: no such store (looked for {tried}); "
            "build one with `bratslab data preprocess RAW STORE`"
        )

    def store_path(self) -> Path:
        """The store folder as an absolute path (see :meth:`locate_store`). An ``s3://``
        store is first synced into this node's cache folder, verified against its manifest's
        hashes (:func:`bratslab.data.remote.local_store`), and that folder is returned.

        Raises:
            ConfigError: no local store (see :meth:`locate_store`), or no ``dataset.json``
                at the ``s3://`` URI.
        """
        from bratslab.data.remote import is_remote, local_store

        located, _ = self.locate_store()
        if not is_remote(located):
            return Path(located)
        try:
            return local_store(located)
        except FileNotFoundError as e:
            raise ConfigError(f"data.store {self.store!r}: {e}") from None
