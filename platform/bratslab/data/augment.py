"""Training-patch augmentation with MONAI dictionary transforms (nnU-Net's recipe plus scanner
shift: bias field, Rician noise, thick slices).

Keys: ``image`` ``(4, X, Y, Z)`` float32 modalities, ``mask`` ``(1, X, Y, Z)`` float32 foreground
mask, ``label`` ``(1, X, Y, Z)`` store labels. Spatial transforms move all three in one
resampling (labels with nearest neighbour); intensity transforms touch the modalities only, so
the mask stays binary and the labels stay put.

Order (nnU-Net's, with the MR-specific transforms where the scanner puts them): flips and one
affine resampling; small copies of the tumour pasted into the brain (lesion copy-paste, so the
scanner transforms after it act on the copies too); the tumour's contrast against the brain per
sub-region and modality; bias field and Rician noise (on the brain as
a magnitude image); Gaussian noise; blur; brightness, per-modality scale, contrast; low
resolution; a random intensity curve per modality (histogram shift); gamma (inverted, then
plain). Transforms with probability 0 are left out of the pipeline.
"""

from __future__ import annotations

import math

import numpy as np
from monai import transforms as T
from monai.utils import convert_to_numpy

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.augment_transforms import (
    IMAGE,
    LABEL,
    MASK,
    SPATIAL,
    MagnitudeDomaind,
    PerModalityd,
    RandLesionContrastd,
    RandLesionPasted,
    RandThickSlicesd,
    brain_mask,
)
from bratslab.data.labels import STORE_LABELS
from bratslab.data.layout import MODALITIES


def _lesion_contrast(cfg: AugmentConfig) -> RandLesionContrastd:
    """``RandLesionContrastd`` for the config's sub-regions and modalities (store labels and
    channel order: NCR 1, ED 2, ET 3; channels in ``MODALITIES`` order)."""
    return RandLesionContrastd(
        cfg.lesion_contrast_prob,
        cfg.lesion_contrast_range,
        labels=tuple(STORE_LABELS[k] for k in cfg.lesion_contrast_labels),
        channels=tuple(MODALITIES.index(m) for m in cfg.lesion_contrast_modalities),
    )


def _affine(cfg: AugmentConfig) -> T.OneOf | None:
    """Rotation and scaling in ONE resampling: a ``OneOf`` over rotate+scale, rotate only, scale
    only and identity, weighted so rotation and scaling keep their own, independent
    probabilities (one ``RandAffined`` cannot switch them separately)."""
    rot = math.radians(cfg.rotate_range_deg)
    p_rot = cfg.rotate_prob if rot > 0 else 0.0
    p_scale = cfg.scale_prob if cfg.scale_range > 0 else 0.0

    def affine(rotate: bool, scale: bool) -> T.RandAffined:
        return T.RandAffined(
            SPATIAL,
            prob=1.0,
            rotate_range=(rot, rot, rot) if rotate else None,
            scale_range=(cfg.scale_range,) * 3 if scale else None,
            mode=("bilinear", "bilinear", "nearest"),
            padding_mode="zeros",
        )

    branches = [
        (p_rot * p_scale, affine(True, True)),
        (p_rot * (1 - p_scale), affine(True, False)),
        ((1 - p_rot) * p_scale, affine(False, True)),
    ]
    branches = [(w, t) for w, t in branches if w > 0]
    if not branches:
        return None
    rest = 1.0 - sum(w for w, _ in branches)
    if rest > 1e-9:
        branches.append((rest, T.Identityd(SPATIAL)))
    return T.OneOf([t for _, t in branches], weights=[w for w, _ in branches])


def _noise_and_blur(cfg: AugmentConfig) -> list:
    """Scanner signal: bias field, Rician and Gaussian noise, blur (probability-0 ones left out)."""
    steps: list = []
    if cfg.bias_field_prob > 0:
        c = cfg.bias_field_coeff
        field = T.RandBiasFieldd(
            IMAGE, degree=cfg.bias_field_degree, coeff_range=(-c, c), prob=cfg.bias_field_prob
        )
        steps.append(MagnitudeDomaind(field))
    if cfg.rician_prob > 0:
        rician = T.RandRicianNoised(
            IMAGE, prob=cfg.rician_prob, std=cfg.rician_std, channel_wise=True, sample_std=True
        )
        steps.append(MagnitudeDomaind(rician))
    if cfg.noise_prob > 0:
        steps.append(T.RandGaussianNoised(IMAGE, prob=cfg.noise_prob, std=cfg.noise_std))
    if cfg.blur_prob > 0:
        s = cfg.blur_sigma
        steps.append(T.RandGaussianSmoothd(IMAGE, s, s, s, prob=cfg.blur_prob))
    return steps


def _intensity(cfg: AugmentConfig) -> list:
    """Scanner and protocol contrast: gain, contrast, resolution, gamma."""
    steps: list = []
    if cfg.brightness_prob > 0:
        r = cfg.brightness_range
        steps.append(T.RandScaleIntensityd(IMAGE, factors=(-r, r), prob=cfg.brightness_prob))
    if cfg.channel_scale_prob > 0:
        r = cfg.channel_scale_range
        steps.append(
            T.RandScaleIntensityd(
                IMAGE, factors=(-r, r), prob=cfg.channel_scale_prob, channel_wise=True
            )
        )
    if cfg.intensity_prob > 0:
        steps += [
            T.RandScaleIntensityd(IMAGE, factors=0.25, prob=cfg.intensity_prob, channel_wise=True),
            T.RandShiftIntensityd(IMAGE, offsets=0.1, prob=cfg.intensity_prob, channel_wise=True),
        ]
    if cfg.contrast_prob > 0:
        r = cfg.contrast_range
        steps.append(
            T.RandScaleIntensityFixedMeand(
                IMAGE,
                factors=(-r, r),
                fixed_mean=True,
                preserve_range=True,
                prob=cfg.contrast_prob,
                channel_wise=True,
            )
        )
    if cfg.lowres_prob > 0 and cfg.lowres_axes == "one":
        steps.append(RandThickSlicesd(IMAGE, prob=cfg.lowres_prob, zoom_range=cfg.lowres_zoom))
    elif cfg.lowres_prob > 0:
        steps.append(
            T.RandSimulateLowResolutiond(IMAGE, prob=cfg.lowres_prob, zoom_range=cfg.lowres_zoom)
        )
    if cfg.histogram_shift_prob > 0:
        curve = T.RandHistogramShift(num_control_points=cfg.histogram_shift_points, prob=1.0)
        steps.append(PerModalityd(curve, prob=cfg.histogram_shift_prob))
    # retain_stats: z-scored inputs keep their mean/std after the gamma curve (nnU-Net).
    if cfg.gamma_invert_prob > 0:
        steps.append(
            T.RandAdjustContrastd(
                IMAGE,
                prob=cfg.gamma_invert_prob,
                gamma=cfg.gamma_range,
                invert_image=True,
                retain_stats=True,
            )
        )
    if cfg.gamma_prob > 0:
        steps.append(
            T.RandAdjustContrastd(
                IMAGE, prob=cfg.gamma_prob, gamma=cfg.gamma_range, retain_stats=True
            )
        )
    return steps


def build_augment(cfg: AugmentConfig, seed: int) -> T.Compose | None:
    """A seeded ``Compose`` of MONAI ``Rand*d`` transforms, or None when disabled (or when every
    probability is 0)."""
    if not cfg.enabled:
        return None
    steps: list = []
    if cfg.flip_prob > 0:
        steps += [T.RandFlipd(SPATIAL, prob=cfg.flip_prob, spatial_axis=a) for a in range(3)]
    affine = _affine(cfg)
    if affine is not None:
        steps.append(affine)
    if cfg.lesion_paste_prob > 0:
        steps.append(
            RandLesionPasted(cfg.lesion_paste_prob, cfg.lesion_paste_zoom, cfg.lesion_paste_count)
        )
    if cfg.lesion_contrast_prob > 0:
        steps.append(_lesion_contrast(cfg))
    steps += _noise_and_blur(cfg) + _intensity(cfg)
    if not steps:
        return None
    compose = T.Compose(steps)
    compose.set_random_state(seed=seed % (2**32))
    return compose


def stress_config() -> AugmentConfig:
    """The stress put on validation cases to fit post-processing (``postprocess fit
    --stress``): small copies of the case's tumour pasted into its brain (true small lesions,
    whose loss the fit must weigh against the false positives it removes), then every
    scanner-shift intensity transform at once, each at probability 1 and at or beyond the CPU
    recipe's training magnitudes (strong coil bias, low SNR, thick slices, a contrast curve per
    modality, gain and gamma). Nothing moves the case, so the labels stay aligned."""
    return AugmentConfig(
        flip_prob=0,
        rotate_prob=0,
        scale_prob=0,
        noise_prob=0,
        intensity_prob=0,
        lesion_paste_prob=1.0,
        lesion_paste_zoom=(0.2, 0.45),
        lesion_paste_count=(2, 4),
        bias_field_prob=1.0,
        bias_field_coeff=0.3,
        rician_prob=1.0,
        rician_std=0.15,
        lowres_prob=1.0,
        lowres_zoom=(0.33, 0.5),
        lowres_axes="one",
        channel_scale_prob=1.0,
        channel_scale_range=0.3,
        histogram_shift_prob=1.0,
        gamma_prob=1.0,
        gamma_range=(0.7, 1.5),
    )


def stress_case(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One draw of :func:`stress_config` on a whole case: ``x`` ``(C, X, Y, Z)`` float32 store
    volume (4 modalities, then the foreground mask if the store has one) and ``y``
    ``(1, X, Y, Z)`` uint8 labels → the same shapes, the mask channel unchanged and the labels
    gaining the pasted lesions. Deterministic per ``seed``."""
    compose = build_augment(stress_config(), seed)
    n = len(MODALITIES)
    with_mask = x if x.shape[0] > n else np.concatenate([x, x[:1] * 0])
    out, labels = apply_augment(compose, with_mask, np.asarray(y, dtype=np.uint8))
    out = out[: x.shape[0]]
    # Outside the brain the scanner records nothing: keep the background as it was (gamma and
    # thick slices would otherwise move it).
    outside = ~brain_mask(with_mask[:n], with_mask[n:])
    out[:n, outside] = x[:n, outside]
    return out, labels


def apply_augment(
    compose: T.Compose | None, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patch: ``x`` ``(C, X, Y, Z)`` float32 (last channel = foreground mask),
    ``y`` ``(1, X, Y, Z)`` uint8 → the same shapes and dtypes."""
    if compose is None:
        return x, y
    out = compose({IMAGE: x[:-1], MASK: x[-1:], LABEL: y.astype(np.float32)})
    image = convert_to_numpy(out[IMAGE], dtype=np.float32)
    mask = (convert_to_numpy(out[MASK]) > 0.5).astype(np.float32)
    label = np.rint(convert_to_numpy(out[LABEL])).astype(np.uint8)
    return np.concatenate([image, mask]), label
