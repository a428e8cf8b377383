"""The MONAI dictionary transforms of :mod:`bratslab.data.augment` that MONAI does not have:
the MR scanner shift (bias field and Rician noise on the brain as a magnitude image, thick
slices, per-modality transforms) and the tumour's (lesion copy-paste, lesion contrast).

Keys: ``image`` ``(4, X, Y, Z)`` float32 modalities, ``mask`` ``(1, X, Y, Z)`` float32 foreground
mask, ``label`` ``(1, X, Y, Z)`` store labels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai import transforms as T
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import convert_to_numpy
from scipy import ndimage

from bratslab.data.labels import STORE_LABELS

IMAGE, MASK, LABEL = "image", "mask", "label"


SPATIAL = [IMAGE, MASK, LABEL]


def brain_mask(img: np.ndarray, mask) -> np.ndarray:
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
        brain = brain_mask(img, d[self.mask_key])
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
        brain = brain_mask(img, d[self.mask_key])
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
        self.apply(img, label, brain_mask(img, d[self.mask_key]))
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


def _grow_box(box: tuple[slice, ...], margin: int, shape) -> tuple[slice, ...]:
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n))
        for b, n in zip(box, shape, strict=True)
    )
