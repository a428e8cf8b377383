"""Training-patch augmentation with MONAI dictionary transforms (nnU-Net's recipe, lighter).

Keys: ``image`` ``(4, X, Y, Z)`` float32 modalities, ``mask`` ``(1, X, Y, Z)`` float32 foreground
mask, ``label`` ``(1, X, Y, Z)`` store labels. Spatial transforms move all three (labels with
nearest neighbour); intensity transforms touch the modalities only, so the mask stays binary.
"""

from __future__ import annotations

import math

import numpy as np
from monai import transforms as T

from bratslab.jobs.spec import AugmentConfig

SPATIAL = ["image", "mask", "label"]


def build_augment(cfg: AugmentConfig, seed: int) -> T.Compose | None:
    """A seeded ``Compose`` of MONAI ``Rand*d`` transforms, or None when disabled."""
    if not cfg.enabled:
        return None
    rot = math.radians(cfg.rotate_range_deg)
    modes_interp = ("bilinear", "bilinear", "nearest")
    steps: list = [T.RandFlipd(SPATIAL, prob=cfg.flip_prob, spatial_axis=a) for a in range(3)]
    steps += [
        T.RandRotated(
            SPATIAL,
            range_x=rot,
            range_y=rot,
            range_z=rot,
            prob=cfg.rotate_prob,
            mode=modes_interp,
            padding_mode="zeros",
        ),
        T.RandZoomd(
            SPATIAL,
            prob=cfg.scale_prob,
            min_zoom=1 - cfg.scale_range,
            max_zoom=1 + cfg.scale_range,
            mode=("trilinear", "trilinear", "nearest"),
            padding_mode="constant",
            keep_size=True,
        ),
        T.RandGaussianNoised("image", prob=cfg.noise_prob, std=cfg.noise_std),
        T.RandScaleIntensityd("image", factors=0.25, prob=cfg.intensity_prob, channel_wise=True),
        T.RandShiftIntensityd("image", offsets=0.1, prob=cfg.intensity_prob, channel_wise=True),
        # retain_stats: z-scored inputs keep their mean/std after the gamma curve (nnU-Net).
        T.RandAdjustContrastd("image", prob=cfg.gamma_prob, gamma=(0.7, 1.5), retain_stats=True),
    ]
    compose = T.Compose(steps)
    compose.set_random_state(seed=seed % (2**32))
    return compose


def apply_augment(
    compose: T.Compose | None, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patch: ``x`` ``(C, X, Y, Z)`` float32 (last channel = foreground mask),
    ``y`` ``(1, X, Y, Z)`` uint8 → the same shapes and dtypes."""
    if compose is None:
        return x, y
    out = compose({"image": x[:-1], "mask": x[-1:], "label": y.astype(np.float32)})
    image = np.asarray(out["image"], dtype=np.float32)
    mask = (np.asarray(out["mask"]) > 0.5).astype(np.float32)
    label = np.rint(np.asarray(out["label"])).astype(np.uint8)
    return np.concatenate([image, mask]), label
