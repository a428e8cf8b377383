"""Model size and cost: parameter counts (total and per group) and FLOPs at a patch size.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on the ``meta`` device:
the network is built and run on shape-only tensors, so even MedNeXt-L at 128³ takes well under a
second and no memory. The counter covers convolutions (incl. transposed) and matmuls, counting a
multiply-add as 2 FLOPs. The MedNeXt paper (like fvcore) counts a multiply-add as **one** FLOP, so
its "GFLOPs" equal our ``gmacs``; it lands ~1–2% above our count, presumably because it also counts
normalisation/activation work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bratslab.models.config import ModelConfig
from bratslab.models.param_groups import param_groups
from bratslab.models.zoo import build_model, shape_factor

_SHARED_FIELDS = {"arch", "in_channels", "out_channels", "output", "deep_supervision"}


def count_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def describe_model(
    cfg: ModelConfig, patch: tuple[int, int, int] = (128, 128, 128)
) -> dict[str, Any]:
    """Parameters (total, per group) and inference cost of one ``(1, C_in, *patch)`` forward pass.

    Returns:
        ``{"arch", "model" (config dict), "patch", "params", "params_by_group",
        "gmacs" (paper's GFLOPs), "gflops" (2 x gmacs)}``.

    Raises:
        ValueError: a patch dimension is not a multiple of the network's ``shape_factor``.
    """
    factor = shape_factor(cfg)
    if any(p % factor or p <= 0 for p in patch):
        raise ValueError(
            f"patch {tuple(patch)}: every size must be a positive multiple of {factor} for this "
            f"{cfg.arch} ({cfg.levels} down-sampling levels)"
        )
    with torch.device("meta"):
        model = build_model(cfg).eval()
    groups = param_groups(model, cfg)
    x = torch.empty(1, cfg.in_channels, *patch, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    return {
        "arch": cfg.arch,
        "model": cfg.model_dump(mode="json", include=_SHARED_FIELDS | {cfg.arch}),
        "patch": list(patch),
        "params": count_params(model),
        "params_by_group": {name: sum(p.numel() for p in ps) for name, ps in groups.items()},
        "gmacs": flops / 2e9,
        "gflops": flops / 1e9,
    }
