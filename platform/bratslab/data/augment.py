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
from collections.abc import Hashable, Mapping

import numpy as np
from monai import transforms as T
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import convert_to_numpy
from scipy import ndimage

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.labels import STORE_LABELS
from bratslab.data.layout import MODALITIES

IMAGE, MASK, LABEL = "image", "mask", "label"
SPATIAL = [IMAGE, MASK, LABEL]


def _brain(img: np.ndarray, mask) -> np.ndarray:
    """Brain voxels ``(X, Y, Z)`` bool: ``mask > 0.5``, or where the mask is empty (stores
    without a mask channel) the voxels where any modality of ``img`` ``(C, X, Y, Z)`` is not 0."""
    brain = convert_to_numpy(mask)[0] > 0.5
    return brain if brain.any() else (img != 0).any(axis=0)


class MagnitudeDomaind(Randomizable, MapTransform):
    """Run a MONAI intensity transform on the brain seen as a non-negative magnitude image.

    Z-scored modalities are negative in dark tissue, but bias fields multiply and Rician noise
    rectifies the scanner's magnitude signal, which is >= 0. So each channel is shifted to put
    its darkest brain voxel at 0 (background 0), ``transform`` runs on that, and the shift is
    undone; voxels outside the brain keep their input values. The brain is ``mask > 0.5``, or
    the non-zero voxels of any modality where the mask is empty (stores without a mask channel).
    """

    def __init__(self, transform: RandomizableTransform, key: str = IMAGE, mask_key: str = MASK):
        MapTransform.__init__(self, [key])
        self.transform = transform
        self.key, self.mask_key = key, mask_key

    def set_random_state(self, seed=None, state=None) -> MagnitudeDomaind:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        """The wrapped transform draws its own parameters."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        img = convert_to_numpy(d[self.key], dtype=np.float32)  # (C, X, Y, Z)
        brain = _brain(img, d[self.mask_key])
        if not brain.any():
            return d
        lo = np.where(brain, img, np.inf).min(axis=(1, 2, 3)).reshape(-1, 1, 1, 1)
        magnitude = np.where(brain, img - lo, 0).astype(np.float32)
        out = convert_to_numpy(self.transform({self.key: magnitude})[self.key], dtype=np.float32)
        d[self.key] = np.where(brain, out + lo, img).astype(np.float32)
        return d


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """nnU-Net's low-resolution simulation along one random axis: thick slices reconstructed to
    the patch grid. That axis is down-sampled by a factor from ``zoom_range`` (nearest) and
    up-sampled back (trilinear) with MONAI ``Resize``; the other axes are untouched."""

    def __init__(self, keys, prob: float, zoom_range: tuple[float, float]):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.zoom_range = zoom_range
        self._axis, self._zoom = 0, 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._axis = int(self.R.randint(3))
        self._zoom = float(self.R.uniform(*self.zoom_range))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            size = list(d[key].shape[1:])
            low = [-1, -1, -1]  # -1: Resize keeps that axis
            low[self._axis] = max(1, round(size[self._axis] * self._zoom))
            down = T.Resize(low, mode="nearest")(d[key])
            d[key] = T.Resize(size, mode="trilinear")(down)
        return d


class PerModalityd(RandomizableTransform, MapTransform):
    """Run a MONAI array intensity transform on each modality separately, over the brain only.

    The wrapped transform draws its parameters afresh for every modality (a scanner's contrast
    differs per sequence), and sees only brain voxels, so the curve spans the brain's intensity
    range rather than a background or outlier voxel's; voxels outside the brain keep their
    input values. The brain is as in :class:`MagnitudeDomaind`. ``prob`` is per patch.
    """

    def __init__(
        self, transform: RandomizableTransform, prob: float, key: str = IMAGE, mask_key: str = MASK
    ):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [key])
        self.transform, self.key, self.mask_key = transform, key, mask_key

    def set_random_state(self, seed=None, state=None) -> PerModalityd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        img = convert_to_numpy(d[self.key], dtype=np.float32)  # (C, X, Y, Z)
        brain = _brain(img, d[self.mask_key])
        out = img.copy()
        for c in range(img.shape[0]):
            values = img[c][brain]  # (N,) brain voxels of modality c
            if values.size > 1:
                out[c][brain] = convert_to_numpy(self.transform(values), dtype=np.float32)
        d[self.key] = out
        return d


class _TumourTransformd(RandomizableTransform, MapTransform):
    """Base of the transforms that act on a patch's tumour (keys image, mask, label): with
    probability ``prob`` per patch, and only when the patch holds tumour, ``apply`` gets copies
    of the image ``(C, X, Y, Z)`` float32 and labels ``(X, Y, Z)`` uint8, and the brain
    ``(X, Y, Z)`` bool, and changes the first two in place."""

    def __init__(self, prob: float, keys: tuple[str, str, str] = (IMAGE, MASK, LABEL)):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, list(keys))
        self.image_key, self.mask_key, self.label_key = keys

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = np.rint(convert_to_numpy(d[self.label_key])[0]).astype(np.uint8)
        if not label.any():
            return d
        img = convert_to_numpy(d[self.image_key], dtype=np.float32).copy()
        self.apply(img, label, _brain(img, d[self.mask_key]))
        d[self.image_key], d[self.label_key] = img, label[None].astype(np.float32)
        return d

    def apply(self, img: np.ndarray, label: np.ndarray, brain: np.ndarray) -> None:
        raise NotImplementedError


class RandLesionPasted(_TumourTransformd):
    """Paste shrunken copies of the patch's tumour elsewhere in its brain (tumour copy-paste,
    TumorCP, Yang et al., MICCAI 2021), so the model sees small lesions and satellites.

    With probability ``prob`` per patch that holds tumour: the bounding box of every tumour
    voxel is cut out of the image (all modalities) and the labels, zoomed by a factor drawn
    from ``zoom_range`` (linear for the image, nearest for the labels), and pasted ``count``
    times (drawn from the range) at random brain positions where it lands wholly inside the
    brain and clear of existing tumour. Only the copy's tumour voxels are pasted, their edge
    blended over about a voxel so the copy has no sharp seam. Copies that find no room after
    a few tries are skipped. The mask never changes.
    """

    TRIES = 10

    def __init__(
        self,
        prob: float,
        zoom_range: tuple[float, float],
        count: tuple[int, int] = (1, 1),
        keys: tuple[str, str, str] = (IMAGE, MASK, LABEL),
    ):
        super().__init__(prob, keys)
        self.zoom_range, self.count = zoom_range, count

    def apply(self, img: np.ndarray, label: np.ndarray, brain: np.ndarray) -> None:
        tumour = label > 0
        box = ndimage.find_objects(tumour.astype(np.int8))[0]
        free = brain & ~ndimage.binary_dilation(tumour, iterations=2)
        for _ in range(int(self.R.randint(self.count[0], self.count[1] + 1))):
            z = float(self.R.uniform(*self.zoom_range))
            small_lab = ndimage.zoom(label[box], z, order=0)
            lesion = small_lab > 0
            if not lesion.any():
                continue
            small_img = ndimage.zoom(img[(slice(None), *box)], (1, z, z, z), order=1)
            at = self._place(free, lesion)
            if at is None:
                continue
            # Blend weight: 1 inside the copy's tumour, falling to 0 over about one voxel.
            alpha = np.clip(ndimage.gaussian_filter(lesion.astype(np.float32), 0.7) * 2, 0, 1)
            alpha[lesion] = 1.0
            img[(slice(None), *at)] = alpha * small_img + (1 - alpha) * img[(slice(None), *at)]
            label[at] = np.where(lesion, small_lab, label[at])
            free[at] &= ~ndimage.binary_dilation(lesion, iterations=2)

    def _place(self, free: np.ndarray, lesion: np.ndarray) -> tuple[slice, ...] | None:
        """A box for ``lesion`` inside the patch whose lesion voxels all fall on ``free``: its
        centre is drawn among the free voxels, up to ``TRIES`` times."""
        centres = np.argwhere(free)
        if not len(centres):
            return None
        for _ in range(self.TRIES):
            c = centres[self.R.randint(len(centres))]
            lo = [int(v) - s // 2 for v, s in zip(c, lesion.shape, strict=True)]
            if any(
                o < 0 or o + s > n for o, s, n in zip(lo, lesion.shape, free.shape, strict=True)
            ):
                continue
            at = tuple(slice(o, o + s) for o, s in zip(lo, lesion.shape, strict=True))
            if free[at][lesion].all():
                return at
        return None


class RandLesionContrastd(_TumourTransformd):
    """Change how far each tumour sub-region stands out from the normal brain, per modality:
    lesion contrast differs between scanners, field strengths and contrast doses (weaker
    enhancement on T1c at a low dose or field, fainter oedema on FLAIR).

    With probability ``prob`` per patch that holds tumour: for each label present (NCR, ED, ET)
    and each modality, a factor ``f`` drawn from ``factor_range``; that label's voxels move to
    ``ref + f * (x - ref)``, ``ref`` the median of the patch's normal brain in that modality.
    The factor map is smoothed over about a voxel, so no new edge appears at label boundaries.
    Only the image changes. ``labels`` (store labels) and ``channels`` (image channels) limit
    it to some sub-regions and modalities; the rest keep their contrast.
    """

    def __init__(
        self,
        prob: float,
        factor_range: tuple[float, float],
        keys: tuple[str, str, str] = (IMAGE, MASK, LABEL),
        labels: tuple[int, ...] = tuple(STORE_LABELS.values()),
        channels: tuple[int, ...] | None = None,
    ):
        super().__init__(prob, keys)
        self.factor_range = factor_range
        self.labels = frozenset(labels)
        self.channels = channels

    def apply(self, img: np.ndarray, label: np.ndarray, brain: np.ndarray) -> None:
        tumour = label > 0
        normal = brain & ~tumour
        if normal.sum() < 8:
            return
        box = _grow_box(ndimage.find_objects(tumour.astype(np.int8))[0], 3, tumour.shape)
        sub_label, sub_brain = label[box], brain[box]
        present = [int(k) for k in np.unique(sub_label) if k in self.labels]
        if not present:
            return
        for c in self.channels if self.channels is not None else range(img.shape[0]):
            ref = float(np.median(img[c][normal]))
            f = np.ones(sub_label.shape, dtype=np.float32)
            for k in present:
                f[sub_label == k] = self.R.uniform(*self.factor_range)
            f = ndimage.gaussian_filter(f, 0.8)
            x = img[c][box]
            moved = sub_brain & (np.abs(f - 1) > 1e-3)  # the filter's far tail: leave it
            img[c][box] = np.where(moved, ref + f * (x - ref), x)


def _lesion_contrast(cfg: AugmentConfig) -> RandLesionContrastd:
    """``RandLesionContrastd`` for the config's sub-regions and modalities (store labels and
    channel order: NCR 1, ED 2, ET 3; channels in ``MODALITIES`` order)."""
    return RandLesionContrastd(
        cfg.lesion_contrast_prob,
        cfg.lesion_contrast_range,
        labels=tuple(STORE_LABELS[k] for k in cfg.lesion_contrast_labels),
        channels=tuple(MODALITIES.index(m) for m in cfg.lesion_contrast_modalities),
    )


def _grow_box(box: tuple[slice, ...], margin: int, shape) -> tuple[slice, ...]:
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n))
        for b, n in zip(box, shape, strict=True)
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
    outside = ~_brain(with_mask[:n], with_mask[n:])
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
