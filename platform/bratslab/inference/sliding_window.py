"""Sliding-window inference with test-time augmentation (TTA) and model ensembles.

A volume is tiled by MONAI's ``sliding_window_inference`` (Gaussian blending, configurable
overlap). TTA follows nnU-Net: all 8 combinations of flips along the three spatial axes
(``nnunetv2/inference/predict_from_raw_data.py``, ``_internal_maybe_mirror_and_predict``),
optionally times the in-plane 90° rotation, which gives the 16 distinct transforms of
{in-plane dihedral group} × {z flip}.

**Three paths, one result.** The textbook way (:func:`predict_probabilities_naive`, the
reference) runs the whole sliding window once per transform of the volume. ``predict`` runs
one of three paths (:mod:`bratslab.inference.tta_path`), all built on :class:`TTAPredictor`, a
sliding-window *predictor* that, for each window batch, builds the transformed views, runs them
through each model, undoes the transforms and averages the probabilities:

* ``naive``: one sliding window per view, with a one-view predictor (the textbook cost: V
  tilings and blendings);
* ``perview``: one sliding window, a window's V views one model call each;
* ``batched``: one sliding window, a window's views in one call (``batched:K``: K per call).

All three tile the *untransformed* volume, so they blend the same windows and return the same
probabilities up to float rounding, whichever is chosen (``tests/unit/inference/
test_sliding_window.py``). The textbook passes tile each flipped volume, whose windows are the
mirror images of those only when the tiling is mirror-symmetric; then they are equal too
(tested), otherwise window positions differ by a few voxels and the results agree closely.
``tta_path="auto"`` (the default) runs the fastest path on this machine, measured once per
network, device, precision and window size and cached (:func:`tta_path.choose`). Every path
uses the same autocast (bf16 on CPU for every architecture at inference, fp16 on CUDA) and
memory layout (:mod:`bratslab.models.runtime`), so they differ in the TTA algorithm only.

Probabilities (sigmoid for ``"regions"`` models, softmax for ``"labels"`` models) are averaged,
not logits, so ensembles of differently calibrated models and the uncertainty map (voxel-wise
standard deviation over all model × transform passes) are well defined.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from bratslab.inference import tta_path as tta_path_mod
from bratslab.inference.tta_path import TTAPath, parse_tta_path
from bratslab.models.runtime import (
    amp_dtype,
    autocast,
    prepare_input,
    prepare_model,
    use_channels_last,
)

log = logging.getLogger(__name__)

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


class TTAPredictor:
    """Sliding-window predictor: window batch ``(B, C_in, x, y, z)`` → probabilities.

    Runs every (model, transform) pair. The window is put into the models' memory layout once
    (:func:`~bratslab.models.runtime.prepare_input`); flips of it keep that layout, so a view
    costs one copy (the flip) and no layout conversion. Views of the same shape go through a
    model ``views_per_call`` at a time as one batch ``(K*B, C_in, x, y, z)`` (``None``: all of
    them; 1: one call per view, which holds one view's activations at a time). Returns the mean
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
        views_per_call: int | None = None,
    ):
        self.models = list(models)
        self.transforms = list(transforms)
        self.activation = activation
        self.device = torch.device(device)
        if views_per_call is not None and views_per_call < 1:
            raise ValueError(f"views_per_call must be at least 1, got {views_per_call}")
        self.views_per_call = views_per_call
        self.amp = amp
        self.return_passes = return_passes

    @property
    def num_passes(self) -> int:
        return len(self.models) * len(self.transforms)

    def _groups(self) -> list[list[int]]:
        """Transform indices per model call: batched by output shape (an odd number of 90°
        rotations swaps X and Y, so those views batch separately), ``views_per_call`` at most."""
        by_parity: dict[int, list[int]] = {}
        for i, t in enumerate(self.transforms):
            by_parity.setdefault(t.k % 2, []).append(i)
        k = self.views_per_call
        return [
            g[j : j + (k or len(g))]
            for g in by_parity.values()
            for j in range(0, len(g), k or len(g))
        ]

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
    tta_path: str = "auto",
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
        tta_path: how the views run: ``naive``, ``perview``, ``batched`` or ``batched:K``
            (:mod:`bratslab.inference.tta_path`; the same probabilities up to float rounding),
            or ``auto``: the fastest on this machine, measured once and cached.

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
    vol = _as_tensor(x)
    run = _PathRunner(
        model_list, transforms, roi_size, sw_batch_size, device, activation, amp, vol.shape[1]
    )
    path = _resolve_path(tta_path, tta, run)
    log.debug("TTA path %s", path.name)
    out = run(path, vol, overlap, uncertainty, progress)[0]
    if not uncertainty:
        return out.cpu().numpy(), None
    n_passes = len(model_list) * len(transforms)
    passes = out.reshape(n_passes, -1, *out.shape[1:])
    probs = passes.mean(0)
    std = passes.std(0, unbiased=False) if n_passes > 1 else torch.zeros_like(probs)
    return probs.cpu().numpy(), std.cpu().numpy()


@dataclass(frozen=True)
class _PathRunner:
    """Runs one :class:`~bratslab.inference.tta_path.TTAPath` on a volume ``(1, C_in, X, Y, Z)``
    → ``(1, C, X, Y, Z)`` mean probabilities, or every pass ``(1, P*C, X, Y, Z)`` (in an order
    that depends on the path; the mean and standard deviation over passes do not)."""

    models: list[nn.Module]
    transforms: list[Transform]
    roi_size: Sequence[int]
    sw_batch_size: int
    device: torch.device
    activation: str
    amp: bool
    in_channels: int

    def predictor(self, path: TTAPath, transforms: list[Transform], passes: bool) -> TTAPredictor:
        return TTAPredictor(
            self.models, transforms, self.activation, device=self.device, amp=self.amp,
            return_passes=passes, views_per_call=path.views_per_call,
        )  # fmt: skip

    def __call__(
        self, path: TTAPath, vol: torch.Tensor, overlap: float, passes: bool, progress: bool
    ) -> torch.Tensor:
        def tile(transforms: list[Transform]) -> torch.Tensor:
            predictor = self.predictor(path, transforms, passes)
            args = (overlap, self.sw_batch_size, self.device, progress)
            return _sliding_window(vol, self.roi_size, predictor, *args)

        if not path.naive:
            return tile(self.transforms)
        # One tiling per view, each window transformed inside the predictor: the windows are
        # those of the shared tiling, so the result equals the other paths' (a tiling of the
        # flipped volume would not be mirror-symmetric in general).
        outs = [tile([t]) for t in self.transforms]
        if passes:
            return torch.cat(outs, dim=1)
        return torch.stack(outs).sum(0).div_(len(outs))

    def warm_up(self, paths: Sequence[TTAPath]) -> None:
        """One model call at every (views per call, window shape) that ``paths`` use, so that
        oneDNN/cuDNN set-up is not timed."""
        shapes = set()
        for path in paths:
            for group in self.predictor(path, self.transforms, False)._groups():
                shapes.add((len(group) * self.sw_batch_size, self.transforms[group[0]].k % 2))
        for n, odd in sorted(shapes):
            roi = [int(r) for r in self.roi_size]
            if odd:
                roi[0], roi[1] = roi[1], roi[0]
            x = prepare_input(torch.zeros(n, self.in_channels, *roi), self.device)
            with torch.inference_mode(), autocast(self.device, self.amp, inference=True):
                for model in self.models:
                    model(x)


def choose_tta_path(
    models: nn.Module | Sequence[nn.Module],
    roi_size: Sequence[int],
    tta: str,
    in_channels: int,
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
    *,
    activation: str = "sigmoid",
    amp: bool = True,
) -> TTAPath:
    """The path ``tta_path="auto"`` runs for these arguments (measured now, or cached); the
    arguments mean what they mean for :func:`predict_probabilities`."""
    device = torch.device(device)
    model_list = [models] if isinstance(models, nn.Module) else list(models)
    model_list = [prepare_model(m.eval(), device) for m in model_list]
    run = _PathRunner(
        model_list, tta_transforms(tta), roi_size, sw_batch_size, device, activation, amp,
        in_channels,
    )  # fmt: skip
    return _resolve_path("auto", tta, run)


def _resolve_path(tta_path: str, tta: str, run: _PathRunner) -> TTAPath:
    """``tta_path`` as a :class:`TTAPath`; ``auto``: measured by :func:`tta_path.choose` on a
    random volume of one window (cached), or per-view when there is one view only."""
    fixed = parse_tta_path(tta_path)
    if fixed is not None:
        return fixed
    if len(run.transforms) == 1:
        return TTAPath(views_per_call=1)  # one view: every path runs the same calls
    dtype = amp_dtype(run.device, inference=True) if run.amp else None
    precision = str(dtype or torch.float32).removeprefix("torch.")
    layout = "channels-last" if use_channels_last(run.device) else "NCDHW"
    key = tta_path_mod.cache_key(
        run.models, run.device, precision, layout, run.roi_size, tta, run.sw_batch_size
    )
    gen = torch.Generator().manual_seed(0)
    window = torch.randn((1, run.in_channels, *[int(r) for r in run.roi_size]), generator=gen)
    paths = tta_path_mod.candidates(run.device, len(run.transforms))
    return tta_path_mod.choose(
        key,
        paths,
        lambda p: run(p, window, 0.5, False, False),
        lambda: run.warm_up(paths),
        run.device,
    )


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
    result is their mean ``(C, X, Y, Z)`` float32. The oracle of the equivalence tests, and the
    ``reference`` arm of ``benchmarks/bench_tta.py``; it costs what ``tta_path="naive"`` costs
    (V tilings, one view per call), which tiles the untransformed volume instead. Memory
    layout and autocast are the same as :func:`predict_probabilities`'.
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
