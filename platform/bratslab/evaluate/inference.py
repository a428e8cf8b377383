"""Sliding-window inference with test-time augmentation (TTA) and model ensembles.

A volume is tiled by MONAI's ``sliding_window_inference`` (Gaussian blending, configurable
overlap). TTA follows nnU-Net: all 8 combinations of flips along the three spatial axes
(``nnunetv2/inference/predict_from_raw_data.py``, ``_internal_maybe_mirror_and_predict``),
optionally times the in-plane 90° rotation, which gives the 16 distinct transforms of
{in-plane dihedral group} × {z flip}.

**One tiling for all views.** The naive way (:func:`predict_probabilities_naive`) runs the
whole sliding window once per transform: 8 passes of tiling, padding and Gaussian aggregation.
Here the *predictor* seen by the sliding window is :class:`TTAPredictor`: for each window batch
it builds every transformed view, runs them through each model, undoes the transforms and
averages the probabilities, so the sliding window runs once. By default the views of a window
go through a model as one batch (:func:`batch_views_default`: on CUDA and, measured faster, on
CPU too); one call per view is the low-memory option. Because the Gaussian map is symmetric,
this equals the mean of the per-transform passes exactly whenever the tiling is
mirror-symmetric (``tests/unit/evaluate/test_eval_inference.py``); otherwise window positions
differ by a few voxels and the results agree closely (``benchmarks/bench_tta.py`` measures the
Dice agreement). Both paths use the same autocast (bf16 on CPU for every architecture at
inference, fp16 on CUDA) and memory layout (:mod:`bratslab.models.runtime`), so they differ in
the TTA algorithm only.

Probabilities (sigmoid for ``"regions"`` models, softmax for ``"labels"`` models) are averaged,
not logits, so ensembles of differently calibrated models and the uncertainty map (voxel-wise
standard deviation over all model × transform passes) are well defined.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from bratslab.models.runtime import autocast, prepare_input, prepare_model

TTA = Literal["none", "flips", "flips+rot90"]
TTA_MODES: tuple[str, ...] = ("none", "flips", "flips+rot90")
Activation = Literal["sigmoid", "softmax"]


@dataclass(frozen=True)
class Transform:
    """Flip ``flip`` spatial axes (0=X, 1=Y, 2=Z) then rotate ``k``×90° in the X-Y plane."""

    flip: tuple[int, ...] = ()
    k: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``(B, C, X, Y, Z)``."""
        if self.flip:
            x = torch.flip(x, [2 + a for a in self.flip])
        if self.k:
            x = torch.rot90(x, self.k, dims=(2, 3))
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward` on ``(B, C, X', Y', Z)``."""
        if self.k:
            y = torch.rot90(y, -self.k, dims=(2, 3))
        if self.flip:
            y = torch.flip(y, [2 + a for a in self.flip])
        return y


def tta_transforms(tta: str) -> list[Transform]:
    """The transforms of a TTA mode: 1 (``none``), 8 (``flips``) or 16 (``flips+rot90``).

    The identity comes first. ``flips+rot90`` adds a 90° in-plane rotation to the 8 flips; with
    flips of X and Y that spans all four in-plane rotations and their mirrors (no duplicates).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)}, not {tta!r}")
    if tta == "none":
        return [Transform()]
    flips = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    out = [Transform(flip=f) for f in flips]
    if tta == "flips+rot90":
        out += [Transform(flip=f, k=1) for f in flips]
    return out


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    logits = logits.float()
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    raise ValueError(f"activation must be 'sigmoid' or 'softmax', not {activation!r}")


def batch_views_default(device: torch.device | str) -> bool:
    """Whether :class:`TTAPredictor` batches a window's transformed views into one model call.

    Yes on CUDA (one call of 8 views keeps the GPU busy where 8 calls of one would not) and on
    CPU: there, a batch of one sends PyTorch's float32 convolutions on small feature maps (the
    deep levels) to its im2col fallback instead of oneDNN (``slow_conv3d_forward`` was 36 % of
    an 8-view U-Net pass at 64³ in a profile), and batching beat one call per view at both
    precisions on a 2-core AVX512-BF16 CPU (BENCHMARKS.md, TTA). ``batch_transforms=False``
    stays available: it holds one view's activations at a time, 1/8 of the memory.
    """
    return torch.device(device).type in ("cpu", "cuda")


class TTAPredictor:
    """Sliding-window predictor: window batch ``(B, C_in, x, y, z)`` → probabilities.

    Runs every (model, transform) pair. The window is put into the models' memory layout once
    (:func:`~bratslab.models.runtime.prepare_input`); flips of it keep that layout, so a view
    costs one copy (the flip) and no layout conversion. With ``batch_transforms`` (default:
    :func:`batch_views_default` for ``device``) views of the same shape go through a model as
    one batch ``(V*B, C_in, x, y, z)``; otherwise one call per view. Returns the mean
    probabilities ``(B, C, x, y, z)`` float32 or, with ``return_passes``, every pass stacked
    along channels ``(B, P*C, x, y, z)`` (P = models × transforms), which the caller reduces
    after blending (for the uncertainty map).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        transforms: Sequence[Transform],
        activation: str = "sigmoid",
        *,
        device: torch.device | str = "cpu",
        amp: bool = False,
        return_passes: bool = False,
        batch_transforms: bool | None = None,
    ):
        self.models = list(models)
        self.transforms = list(transforms)
        self.activation = activation
        self.device = torch.device(device)
        if batch_transforms is None:
            batch_transforms = batch_views_default(self.device)
        self.batch_transforms = batch_transforms
        self.amp = amp
        self.return_passes = return_passes

    @property
    def num_passes(self) -> int:
        return len(self.models) * len(self.transforms)

    def _groups(self) -> list[list[int]]:
        """Transform indices per model call: one each, or batched by output shape (an odd number
        of 90° rotations swaps X and Y, so those views batch separately)."""
        if not self.batch_transforms:
            return [[i] for i in range(len(self.transforms))]
        by_parity: dict[int, list[int]] = {}
        for i, t in enumerate(self.transforms):
            by_parity.setdefault(t.k % 2, []).append(i)
        return list(by_parity.values())

    @torch.inference_mode()
    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        b = window.shape[0]
        base = prepare_input(window, self.device)
        total: torch.Tensor | None = None
        passes: list[torch.Tensor | None] = [None] * self.num_passes
        for indices in self._groups():
            # prepare_input is a no-op on a flipped view (same layout); rotations need a copy.
            views = [prepare_input(self.transforms[i].forward(base), self.device) for i in indices]
            batch = views[0] if len(views) == 1 else torch.cat(views)
            for m, model in enumerate(self.models):
                with autocast(self.device, self.amp, inference=True):
                    logits = model(batch)
                if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
                    logits = logits[0]
                probs = _activate(logits, self.activation)
                for j, i in enumerate(indices):
                    p = self.transforms[i].inverse(probs[j * b : (j + 1) * b])
                    if self.return_passes:
                        passes[m * len(self.transforms) + i] = p
                    else:
                        total = p.clone() if total is None else total.add_(p)
        if self.return_passes:
            return torch.cat(passes, dim=1).contiguous()  # type: ignore[arg-type]
        assert total is not None
        return total.div_(self.num_passes).contiguous()


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    if t.ndim != 4:
        raise ValueError(f"expected an input volume (C_in, X, Y, Z), got shape {tuple(t.shape)}")
    return t.float()[None]


def _sliding_window(
    x: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    progress: bool,
) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=list(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=device,
            progress=progress,
        )
    return torch.as_tensor(out).float()


def predict_probabilities(
    models: nn.Module | Sequence[nn.Module],
    x: np.ndarray | torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    tta: str = "none",
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
    *,
    activation: str = "sigmoid",
    uncertainty: bool = False,
    amp: bool = True,
    progress: bool = False,
    batch_transforms: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities for one volume, averaged over models and TTA transforms.

    Args:
        models: one network or an ensemble (eval mode is set here), each mapping
            ``(B, C_in, x, y, z)`` → logits ``(B, C, x, y, z)``.
        x: ``(C_in, X, Y, Z)`` float input in store space.
        roi_size: sliding-window size ``(x, y, z)`` voxels (the model's patch size).
        overlap: fraction of overlap between neighbouring windows (0 ≤ overlap < 1).
        tta: ``"none"``, ``"flips"`` (8 mirrorings) or ``"flips+rot90"`` (16 transforms).
        sw_batch_size: windows per model call; each call holds ``sw_batch_size × transforms``
            copies.
        device: where the models run.
        activation: ``"sigmoid"`` (region models) or ``"softmax"`` (label models).
        uncertainty: also return the voxel-wise standard deviation over passes (P = models ×
            transforms); costs P× the output memory.
        amp: autocast (bf16 on CPU, fp16 on CUDA); off gives bit-reproducible float32.
        progress: show MONAI's window progress bar.
        batch_transforms: run a window's TTA views as one batch per model call; ``None`` picks
            :func:`batch_views_default` for ``device``.

    Returns:
        ``(probs, std)``: ``(C, X, Y, Z)`` float32 in [0, 1] and ``(C, X, Y, Z)`` float32 or None.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if len(roi_size) != 3 or any(int(r) < 1 for r in roi_size):
        raise ValueError(f"roi_size must be three positive sizes, got {list(roi_size)}")
    device = torch.device(device)
    model_list = [models] if isinstance(models, nn.Module) else list(models)
    if not model_list:
        raise ValueError("predict_probabilities needs at least one model")
    model_list = [prepare_model(m.eval(), device) for m in model_list]
    transforms = tta_transforms(tta)
    predictor = TTAPredictor(
        model_list,
        transforms,
        activation,
        device=device,
        amp=amp,
        return_passes=uncertainty,
        batch_transforms=batch_transforms,
    )
    vol = _as_tensor(x)
    out = _sliding_window(vol, roi_size, predictor, overlap, sw_batch_size, device, progress)[0]
    if not uncertainty:
        return out.cpu().numpy(), None
    n_passes = predictor.num_passes
    passes = out.reshape(n_passes, -1, *out.shape[1:])
    probs = passes.mean(0)
    std = passes.std(0, unbiased=False) if n_passes > 1 else torch.zeros_like(probs)
    return probs.cpu().numpy(), std.cpu().numpy()


def predict_probabilities_naive(
    models: nn.Module | Sequence[nn.Module],
    x: np.ndarray | torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    tta: str = "flips",
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
    *,
    activation: str = "sigmoid",
    amp: bool = False,
) -> np.ndarray:
    """Reference TTA: one full sliding-window pass per transform of the whole volume.

    Each pass transforms the volume ``(C_in, X, Y, Z)``, runs ``sliding_window_inference``
    (rotated passes with the rotated ``roi_size``), and transforms the probabilities back; the
    result is their mean ``(C, X, Y, Z)`` float32. This is the baseline of
    ``benchmarks/bench_tta.py`` and the oracle of the equivalence test. Memory layout and
    autocast are the same as :func:`predict_probabilities`' (the TTA algorithm is the only
    difference), so the benchmark's ratio between the two measures the algorithm alone.
    """
    device = torch.device(device)
    model_list = [models] if isinstance(models, nn.Module) else list(models)
    model_list = [prepare_model(m.eval(), device) for m in model_list]
    vol = _as_tensor(x)
    total = None
    transforms = tta_transforms(tta)
    for t in transforms:
        roi = list(roi_size)
        if t.k % 2:
            roi[0], roi[1] = roi[1], roi[0]
        for model in model_list:

            def predictor(window: torch.Tensor, model: nn.Module = model) -> torch.Tensor:
                with autocast(device, amp, inference=True):
                    logits = model(prepare_input(window, device))
                if isinstance(logits, (list, tuple)):
                    logits = logits[0]
                return _activate(logits, activation).contiguous()

            p = _sliding_window(
                t.forward(vol), roi, predictor, overlap, sw_batch_size, device, False
            )
            p = t.inverse(p)
            total = p if total is None else total + p
    assert total is not None
    return (total / (len(transforms) * len(model_list)))[0].cpu().numpy()
