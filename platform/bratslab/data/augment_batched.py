"""The augmentation recipe applied to a whole batch in torch, on the training device
(``data.augment.on: device``).

The same transforms, order and parameter ranges as the MONAI pipeline of
:mod:`bratslab.data.augment` (see its docstring), each drawn per patch
(:func:`bratslab.data.augment_draw.draw_sample`): flips, rotation and scaling folded into ONE
``affine_grid`` + ``grid_sample`` resampling (image and mask trilinear, labels nearest), that
also crops the loader's larger patch to the training patch; lesion copy-paste (per patch on
the CPU with the MONAI path's own class: its boxes, zooms and placement tries are irregular,
and it fires only on patches that hold tumour); lesion contrast (per patch, in torch); bias and
Rician noise on the brain as a magnitude image; Gaussian noise; blur; brightness,
per-modality scale, the coarse intensity scale and shift; contrast; low resolution (thick
slices or all axes); a histogram curve per modality over the brain; inverted gamma, gamma.

Tensors: ``x`` ``(B, C, D, H, W)`` float32 (``C`` = 4 modalities, then the foreground mask if
the store has one), ``y`` ``(B, 1, D, H, W)`` uint8 store labels. Intensity transforms touch
the modalities only; the mask comes back binary and the labels within the input's label set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import gaussian_1d

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.augment_draw import SampleDraw, Vec, affine_matrix, draw_sample
from bratslab.data.augment_transforms import IMAGE, LABEL, MASK, RandLesionPasted
from bratslab.data.labels import STORE_LABELS
from bratslab.data.layout import MODALITIES

MODALITY_CHANNELS = 4


def _theta(d: SampleDraw, size_in: Sequence[int], size_out: Sequence[int]) -> np.ndarray:
    """``(3, 4)`` ``affine_grid`` matrix of one draw (:func:`affine_matrix`) in
    ``grid_sample``'s normalised (x=W, y=H, z=D) coordinates, ``align_corners=False``."""
    a = affine_matrix(d)
    t = np.diag(2.0 / np.asarray(size_in)) @ a @ np.diag(np.asarray(size_out) / 2.0)
    return np.concatenate([t[::-1, ::-1], np.zeros((3, 1))], axis=1)


def spatial(
    x: torch.Tensor, y: torch.Tensor, draws: Sequence[SampleDraw], size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, rotation and scaling in one resampling, and the centre crop to ``size``:
    ``x`` ``(B, C, D', H', W')``, ``y`` ``(B, 1, D', H', W')`` (each side at least ``size``'s)
    → ``(B, C, *size)``, ``(B, 1, *size)``. Patches without rotation or scaling are only
    cropped and flipped (exact); the others are resampled trilinear (labels nearest), zeros
    outside the input."""
    size_in = list(x.shape[2:])
    lo = [(i - o) // 2 for i, o in zip(size_in, size, strict=True)]
    crop = tuple(slice(a, a + o) for a, o in zip(lo, size, strict=True))
    xo = x[(slice(None), slice(None), *crop)].clone()
    yo = y[(slice(None), slice(None), *crop)].clone()
    for i, d in enumerate(draws):
        dims = [a + 1 for a in range(3) if d.flips[a]]
        if d.affine:  # one patch at a time: x[i : i + 1] is a view, x[list] would copy
            theta = torch.as_tensor(_theta(d, size_in, size)[None], dtype=torch.float32)
            grid = F.affine_grid(theta.to(x.device), [1, 1, *size], align_corners=False)
            xo[i] = F.grid_sample(x[i : i + 1], grid, mode="bilinear", align_corners=False)[0]
            ys = F.grid_sample(y[i : i + 1].float(), grid, mode="nearest", align_corners=False)
            yo[i] = ys[0].round().to(y.dtype)
        elif dims:
            xo[i], yo[i] = xo[i].flip(dims), yo[i].flip(dims)
    return xo, yo


def brain_of(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Brain ``(n, 1, D, H, W)`` bool: ``mask > 0.5``, or where a patch's mask is empty the
    voxels where any modality of ``img`` ``(n, C, D, H, W)`` is not 0."""
    brain = mask > 0.5
    empty = ~brain.flatten(1).any(1)
    if bool(empty.any()):
        brain = torch.where(empty.view(-1, 1, 1, 1, 1), (img != 0).any(1, keepdim=True), brain)
    return brain


def _magnitude(img: torch.Tensor, brain: torch.Tensor, fn) -> None:
    """``fn`` on one patch's brain as a non-negative magnitude image, in place: each channel of
    ``img`` ``(C, D, H, W)`` shifted so its darkest voxel of ``brain`` ``(1, D, H, W)`` is 0,
    ``fn`` (pointwise: the background's values are discarded, so they need no zeroing),
    shifted back; voxels outside the brain keep their values."""
    if not bool(brain.any()):
        return
    lo = img.masked_fill(~brain, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    out = fn(img - lo).add_(lo)
    img.copy_(torch.where(brain, out, img))


_LEGENDRE: dict[tuple[int, int, str], torch.Tensor] = {}


def _legendre(n: int, degree: int, device: torch.device) -> torch.Tensor:
    """``(degree + 1, n)`` Legendre polynomials on ``linspace(-1, 1, n)`` (cached)."""
    key = (n, degree, str(device))
    if key not in _LEGENDRE:
        x = np.linspace(-1.0, 1.0, n, dtype=np.float32).astype(np.float64)
        v = np.polynomial.legendre.legvander(x, degree).T
        _LEGENDRE[key] = torch.as_tensor(v, dtype=torch.float32, device=device)
    return _LEGENDRE[key]


def bias_field(coeffs: Sequence[Vec], degree: int, shape, device) -> torch.Tensor:
    """``exp`` of RandBiasField's Legendre polynomial field: ``(n, D, H, W)`` for ``n``
    coefficient vectors (MONAI's order of the ``(i, j, k)`` terms, total degree <= degree)."""
    pts = [
        (i, j, k)
        for i in range(degree + 1)
        for j in range(degree + 1 - i)
        for k in range(degree + 1 - i - j)
    ]
    mat = torch.zeros((len(coeffs), *(degree + 1,) * 3), dtype=torch.float32, device=device)
    idx = torch.as_tensor(pts, device=device).T
    mat[:, idx[0], idx[1], idx[2]] = torch.as_tensor(coeffs, dtype=torch.float32, device=device)
    px, py, pz = (_legendre(n, degree, device) for n in shape)
    return torch.exp(torch.einsum("bijk,ix,jy,kz->bxyz", mat, px, py, pz))


def _randn(shape, seed: int, salt: int, device) -> torch.Tensor:
    """Standard normal noise of one patch, reproducible per (draw seed, transform)."""
    g = torch.Generator(device=device).manual_seed((seed * 7919 + salt) % 2**63)
    return torch.randn(shape, generator=g, device=device)


def _gamma(img: torch.Tensor, gamma: float, invert: bool) -> None:
    """MONAI AdjustContrast(gamma, invert_image, retain_stats) on one patch ``(C, D, H, W)``
    (all modalities together), in place. Standardising ``u ** gamma * range + min`` equals
    standardising ``u ** gamma``, which saves two passes over the volume."""
    flat = img.flatten()
    mn, sd = flat.mean(), flat.std()
    lo, hi = flat.aminmax()
    r = hi - lo
    # inverted: x = -img, whose minimum is -hi, so x - min(x) = hi - img
    z = (hi - img if invert else img - lo).div_(r + 1e-7).pow_(gamma)
    scale = sd * r / (r * z.std() + 1e-8)
    img.copy_(z.sub_(z.mean()).mul_(-scale if invert else scale).add_(mn))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``x`` (N,) through ``(xp, fp)`` (K,) (RandHistogramShift.interp)."""
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    i = (torch.searchsorted(xp, x) - 1).clamp(0, len(m) - 1)
    f = m[i] * x + b[i]
    f[x < xp[0]] = fp[0]
    f[x > xp[-1]] = fp[-1]
    return f


def histogram_shift(img: torch.Tensor, brain: torch.Tensor, curves: Sequence[Vec]) -> None:
    """One patch ``img`` ``(C, D, H, W)``, in place: channel ``c``'s brain voxels through the
    curve ``curves[c]`` (control points on [0, 1]) scaled to their own range."""
    for c, curve in enumerate(curves):
        values = img[c][brain]
        if values.numel() < 2:
            continue
        lo, hi = values.min(), values.max()
        if lo == hi:
            continue
        fp = torch.as_tensor(curve, dtype=img.dtype, device=img.device)
        xp = torch.linspace(0, 1, len(curve), dtype=torch.float64).to(img.device, img.dtype)
        img[c][brain] = _interp(values, xp * (hi - lo) + lo, fp * (hi - lo) + lo)


def low_resolution(img: torch.Tensor, axis: int, zoom: float) -> torch.Tensor:
    """One patch ``img`` ``(C, D, H, W)`` down-sampled by ``zoom`` (nearest) along ``axis``
    (-1: every axis) and back (trilinear), as RandThickSlicesd / RandSimulateLowResolution."""
    size = list(img.shape[1:])
    if axis < 0:
        low = [max(1, int(np.round(s * zoom))) for s in size]
    else:
        low = list(size)
        low[axis] = max(1, round(size[axis] * zoom))
    down = F.interpolate(img[None], size=low, mode="nearest")
    return F.interpolate(down, size=size, mode="trilinear", align_corners=False)[0]


def blur(img: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """One patch ``(C, D, H, W)`` smoothed as MONAI's GaussianSmooth (its erf kernels, zeros
    outside), each axis as a weighted sum of shifted views: ~3x less CPU than the depthwise
    ``conv3d`` MONAI's separable filter runs, the same result within float32 rounding."""
    out = img
    for axis, s in enumerate(sigma):
        k = gaussian_1d(torch.tensor(s), truncated=4.0, approx="erf").tolist()
        tail, d, n = (len(k) - 1) // 2, axis + 1, img.shape[axis + 1]
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = tail
        padded = F.pad(out, pad)
        acc = padded.narrow(d, 0, n) * k[0]
        for t in range(1, len(k)):
            acc.add_(padded.narrow(d, t, n), alpha=k[t])
        out = acc
    return out


def _smooth(f: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy's ``gaussian_filter(f, sigma)`` (mode reflect, truncate 4) of ``f`` (D, H, W)."""
    r = int(4.0 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = (k / k.sum()).to(f.device, f.dtype)
    out = f[None, None]
    for axis in range(3):
        d = axis + 2
        n = out.shape[d]
        if n < r:  # scipy reflects repeatedly; a box this thin is left unsmoothed on that axis
            continue
        pads = [out.narrow(d, 0, r).flip(d), out, out.narrow(d, n - r, r).flip(d)]
        shape = [1, 1, 1, 1, 1]
        shape[d] = 2 * r + 1
        out = F.conv3d(torch.cat(pads, d), k.view(shape))
    return out[0, 0]


def lesion_contrast(img, label, brain, cfg: AugmentConfig, rng: np.random.RandomState) -> None:
    """RandLesionContrastd on one patch in torch, in place: ``img`` ``(C, D, H, W)``, labels
    ``(D, H, W)`` uint8, brain ``(D, H, W)`` bool; factors drawn from ``rng`` in the CPU
    class's order (per modality, per sub-region present), so the same random state gives
    the same output."""
    tumour = label > 0
    normal = brain & ~tumour
    if int(normal.sum()) < 8 or not bool(tumour.any()):
        return
    nz = tumour.nonzero()
    lo = (nz.amin(0) - 3).clamp(min=0).tolist()
    hi = [min(int(h) + 4, n) for h, n in zip(nz.amax(0).tolist(), label.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub_label, sub_brain = label[box], brain[box]
    labels = {STORE_LABELS[k] for k in cfg.lesion_contrast_labels}
    present = [k for k in torch.unique(sub_label).tolist() if k in labels]
    if not present:
        return
    for c in (MODALITIES.index(m) for m in cfg.lesion_contrast_modalities):
        ref = torch.quantile(img[c][normal], 0.5)  # np.median: the mean of the middle two
        f = torch.ones(sub_label.shape, dtype=img.dtype, device=img.device)
        for k in present:
            f[sub_label == k] = float(rng.uniform(*cfg.lesion_contrast_range))
        f = _smooth(f, 0.8)
        x = img[c][box]
        moved = sub_brain & ((f - 1).abs() > 1e-3)  # the filter's far tail: leave it
        img[c][box] = torch.where(moved, ref + f * (x - ref), x)


def _picked(draws: Sequence[SampleDraw], name: str) -> list[int]:
    """Indices of the patches whose draw fires transform ``name``."""
    return [i for i, d in enumerate(draws) if getattr(d, name) not in (None, False)]


def _per_patch(values, img: torch.Tensor) -> torch.Tensor:
    """Per-patch (``(n,)``) or per-modality (``(n, C)``) values → broadcastable to ``img``."""
    t = torch.as_tensor(values, dtype=img.dtype, device=img.device)
    return t.view(t.shape[0], -1, 1, 1, 1)


class BatchAugment:
    """The recipe of ``cfg`` for batches cut ``margin`` voxels larger than ``patch_size`` on
    each side (:func:`~bratslab.data.augment_draw.affine_margin`); ``__call__`` draws each
    patch's parameters from its seed and applies them on the batch's device."""

    def __init__(self, cfg: AugmentConfig, patch_size: Sequence[int]):
        self.cfg, self.size = cfg, [int(p) for p in patch_size]
        self.paste = None
        if cfg.lesion_paste_prob > 0:
            self.paste = RandLesionPasted(1.0, cfg.lesion_paste_zoom, cfg.lesion_paste_count)

    def draws(self, seeds: Sequence[int]) -> list[SampleDraw]:
        return [draw_sample(self.cfg, int(s), MODALITY_CHANNELS) for s in seeds]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, seeds: Sequence[int], draws=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, D', H', W')`` float32, ``y`` ``(B, 1, D', H', W')`` uint8 (the loader's
        larger patches, any device) → ``(B, C, *patch_size)``, ``(B, 1, *patch_size)``, the same
        device and dtypes; ``seeds`` ``(B,)`` one per patch (``draws`` overrides them)."""
        draws = list(draws) if draws is not None else self.draws(seeds)
        channels = x.shape[1]
        x = x.float()
        if channels == MODALITY_CHANNELS:  # no mask channel in the store: an empty one
            x = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        x, y = spatial(x, y, draws, self.size)
        x[:, MODALITY_CHANNELS:] = (x[:, MODALITY_CHANNELS:] > 0.5).float()
        self._lesions(x, y, draws)
        img, mask = x[:, :MODALITY_CHANNELS], x[:, MODALITY_CHANNELS:]
        self._scanner(img, mask, draws)
        self._contrast(img, mask, draws)
        return x[:, :channels], y

    def _lesions(self, x: torch.Tensor, y: torch.Tensor, draws: Sequence[SampleDraw]) -> None:
        """Lesion copy-paste per patch on the CPU (the MONAI path's class: irregular boxes,
        zooms and placement tries), then lesion contrast in torch on the batch's device."""
        c = MODALITY_CHANNELS
        for i in _picked(draws, "lesion_paste") if self.paste is not None else []:
            self.paste.set_random_state(seed=draws[i].seed % 2**32)
            out = self.paste(
                {
                    IMAGE: x[i, :c].cpu().numpy(),
                    MASK: x[i, c:].cpu().numpy(),
                    LABEL: y[i].cpu().numpy().astype(np.float32),
                }
            )
            x[i, :c] = torch.as_tensor(out[IMAGE]).to(x.device)
            y[i] = torch.as_tensor(np.rint(np.asarray(out[LABEL]))).to(y)
        for i in _picked(draws, "lesion_contrast"):
            rng = np.random.RandomState((draws[i].seed + 1) % 2**32)
            rng.rand()  # the CPU class's own draw of whether it fires
            brain = brain_of(x[i : i + 1, :c], x[i : i + 1, c:])[0, 0]
            lesion_contrast(x[i, :c], y[i, 0], brain, self.cfg, rng)

    def _scanner(self, img: torch.Tensor, mask: torch.Tensor, draws) -> None:
        """Bias field, Rician noise (magnitude domain), Gaussian noise, blur; in place, one
        patch at a time on views (no copies of the batch)."""
        dev, shape = img.device, img.shape[1:]
        for i in _picked(draws, "bias_coeffs"):
            d = draws[i]
            field = bias_field([d.bias_coeffs], self.cfg.bias_field_degree, shape[1:], dev)
            brain = brain_of(img[i : i + 1], mask[i : i + 1])[0]
            _magnitude(img[i], brain, lambda m, f=field: m.mul_(f))
        for i in _picked(draws, "rician_std"):
            d = draws[i]
            std = torch.as_tensor(d.rician_std, dtype=img.dtype, device=dev).view(-1, 1, 1, 1)

            def rician(m: torch.Tensor, d=d, std=std) -> torch.Tensor:
                n1 = _randn(shape, d.seed, 1, dev).mul_(std).add_(m).square_()
                n2 = _randn(shape, d.seed, 2, dev).mul_(std).square_()
                return n1.add_(n2).sqrt_()

            _magnitude(img[i], brain_of(img[i : i + 1], mask[i : i + 1])[0], rician)
        for i in _picked(draws, "noise_std"):
            img[i].add_(_randn(shape, draws[i].seed, 3, dev).mul_(draws[i].noise_std))
        for i in _picked(draws, "blur_sigma"):
            img[i] = blur(img[i], draws[i].blur_sigma)

    def _contrast(self, img: torch.Tensor, mask: torch.Tensor, draws) -> None:
        """Gain, contrast, resolution, histogram curve, gamma; in place, per patch."""
        for name in ("brightness", "channel_scale", "intensity_scale"):
            for i in _picked(draws, name):
                img[i].mul_(1 + _per_patch([getattr(draws[i], name)], img)[0])
        for i in _picked(draws, "intensity_shift"):
            img[i].add_(_per_patch([draws[i].intensity_shift], img)[0])
        for i in _picked(draws, "contrast"):
            x = img[i]
            mn = x.mean(dim=(1, 2, 3), keepdim=True)
            lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
            f = _per_patch([draws[i].contrast], img)[0]
            x.sub_(mn).mul_(1 + f).add_(mn)
            torch.minimum(torch.maximum(x, lo, out=x), hi, out=x)
        for i in _picked(draws, "lowres"):
            img[i] = low_resolution(img[i], *draws[i].lowres)
        for i in _picked(draws, "histogram"):
            brain = brain_of(img[i : i + 1], mask[i : i + 1])[0, 0]
            histogram_shift(img[i], brain, draws[i].histogram)
        for name, invert in (("gamma_invert", True), ("gamma", False)):
            for i in _picked(draws, name):
                _gamma(img[i], getattr(draws[i], name), invert)
