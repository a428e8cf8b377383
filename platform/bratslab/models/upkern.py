"""UpKern (Roy et al. 2023, MedNeXt §3.3): start a large-kernel network from a small-kernel one.

Each depthwise kernel ``(C, 1, k, k, k)`` of the source is trilinearly resampled to the target's
``(C, 1, k', k', k')`` (k3 → k5 → k7); every other tensor is copied unchanged. Resampling follows
the official code (``MIC-DKFZ/MedNeXt``, ``nnunet_mednext/run/load_weights.py``):
``F.interpolate(w, size=(k',k',k'), mode="trilinear")`` with PyTorch's default
``align_corners=False``; the kernel centre is preserved either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def resample_kernel(
    weight: torch.Tensor, size: tuple[int, int, int], align_corners: bool = False
) -> torch.Tensor:
    """Trilinearly resample a ``(C_out, C_in/groups, k, k, k)`` kernel to ``(..., *size)``.

    Interpolation runs in float32 and the result keeps ``weight``'s dtype.
    """
    out = F.interpolate(
        weight.detach().float(), size=size, mode="trilinear", align_corners=align_corners
    )
    return out.to(weight.dtype)


def upkern_state_dict(
    src_state_dict: Mapping[str, torch.Tensor],
    target_model: nn.Module,
    align_corners: bool = False,
) -> dict[str, torch.Tensor]:
    """A state dict for ``target_model`` built from a smaller-kernel network's ``src_state_dict``.

    Args:
        src_state_dict: trained weights (e.g. MedNeXt k3), same architecture apart from kernels.
        target_model: the larger-kernel network (e.g. MedNeXt k5); only its shapes are read.
        align_corners: passed to the trilinear interpolation (official code: False).

    Returns:
        ``{name: tensor}`` with the target's keys; load it with ``target_model.load_state_dict``.

    Raises:
        ValueError: keys differ, or a tensor's shape differs other than in the spatial extent of a
            depthwise kernel (``(C, 1, k, k, k)``); the message names the tensor.
    """
    target = target_model.state_dict()
    missing = sorted(set(target) - set(src_state_dict))
    extra = sorted(set(src_state_dict) - set(target))
    if missing or extra:
        raise ValueError(
            "upkern: source and target networks differ in their tensors; "
            f"missing in source: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"not in target: {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, tgt in target.items():
        src = src_state_dict[name]
        if src.shape == tgt.shape:
            out[name] = src.detach().clone()
            continue
        depthwise = (
            src.ndim == tgt.ndim == 5 and src.shape[1] == 1 and src.shape[:2] == tgt.shape[:2]
        )
        if not depthwise:
            raise ValueError(
                f"upkern: tensor {name!r} has shape {tuple(src.shape)} in the source but "
                f"{tuple(tgt.shape)} in the target; only depthwise kernels (C, 1, k, k, k) "
                "may differ"
            )
        out[name] = resample_kernel(src, tuple(tgt.shape[2:]), align_corners).to(tgt.dtype)
    return out
