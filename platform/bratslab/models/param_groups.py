"""Named parameter groups by resolution level, for differential learning rates and freezing.

Groups, in forward order, for a network with ``L`` down-sampling levels::

    stem, enc0, ..., enc{L-1}, bottleneck, dec{L-1}, ..., dec0, head[, ds_heads]

``encI`` and ``decI`` work at scale ``1/2**I``: ``enc0``/``dec0`` are the full-resolution encoder
and decoder stages (``dec0`` is the final decoder stage). A down-/up-sampling block belongs to the
stage whose resolution it produces. ``stem`` is the layer that reads the input modalities (the
first convolution (+ its norm for U-Net)); ``head`` the final 1x1x1 classifier; ``ds_heads`` the
auxiliary deep-supervision classifiers (only with ``deep_supervision``).

Every parameter lands in exactly one group: a parameter that matches no rule is an error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from torch import nn

from bratslab.models.config import ModelConfig


def group_names(cfg: ModelConfig) -> list[str]:
    """Ordered group names for ``cfg`` (input side first)."""
    levels = cfg.levels
    names = ["stem", *(f"enc{i}" for i in range(levels)), "bottleneck"]
    names += [f"dec{i}" for i in reversed(range(levels))]
    names.append("head")
    if cfg.deep_supervision:
        names.append("ds_heads")
    return names


def _mednext_group(name: str, levels: int) -> str | None:
    if name.startswith("stem."):
        return "stem"
    if m := re.match(r"enc_stages\.(\d+)\.", name):
        return f"enc{int(m[1])}"
    if m := re.match(r"down_blocks\.(\d+)\.", name):
        i = int(m[1]) + 1
        return "bottleneck" if i == levels else f"enc{i}"
    if name.startswith("bottleneck."):
        return "bottleneck"
    if m := re.match(r"(?:up_blocks|dec_stages)\.(\d+)\.", name):
        return f"dec{levels - 1 - int(m[1])}"
    if name.startswith("out_0."):
        return "head"
    if name.startswith("out_blocks."):
        return "ds_heads"
    return None


def _unet_group(name: str, levels: int) -> str | None:
    if name.startswith(("input_block.conv1.", "input_block.norm1.")):
        return "stem"
    if name.startswith("input_block."):
        return "enc0"
    if m := re.match(r"downsamples\.(\d+)\.", name):
        return f"enc{int(m[1]) + 1}"
    if name.startswith("bottleneck."):
        return "bottleneck"
    if m := re.match(r"upsamples\.(\d+)\.", name):
        return f"dec{levels - 1 - int(m[1])}"
    if name.startswith("output_block."):
        return "head"
    if name.startswith("deep_supervision_heads."):
        return "ds_heads"
    return None


def _segresnet_group(name: str, levels: int) -> str | None:
    if name.startswith("encoder.conv_init."):
        return "stem"
    if m := re.match(r"encoder\.layers\.(\d+)\.(blocks|downsample)\.", name):
        i = int(m[1]) + (1 if m[2] == "downsample" else 0)
        return "bottleneck" if i == levels else f"enc{i}"
    if m := re.match(r"up_layers\.(\d+)\.(upsample|blocks|head)\.", name):
        j = int(m[1])
        if m[2] == "head":
            return "head" if j == levels - 1 else "ds_heads"
        return f"dec{levels - 1 - j}"
    return None


_RULES = {"mednext": _mednext_group, "unet": _unet_group, "segresnet": _segresnet_group}


def param_groups(model: nn.Module, cfg: ModelConfig) -> dict[str, list[nn.Parameter]]:
    """Split ``model``'s parameters into the groups of :func:`group_names` (same order).

    Raises:
        ValueError: a parameter matches no group (the model does not fit ``cfg``).
    """
    names = group_names(cfg)
    groups: dict[str, list[nn.Parameter]] = {n: [] for n in names}
    rule = _RULES[cfg.arch]
    for pname, param in model.named_parameters():
        group = rule(pname, cfg.levels)
        if group not in groups:
            raise ValueError(
                f"parameter {pname!r} of the {cfg.arch} model fits no group of {names}; "
                "was the model built from this config?"
            )
        groups[group].append(param)
    return groups


def select_groups(cfg: ModelConfig, patterns: Iterable[str]) -> list[str]:
    """Group names matching any shell pattern (``"dec*"``, ``"stem"``, ``"enc0"``).

    Raises:
        ValueError: a pattern matches no group (a typo would otherwise silently do nothing).
    """
    names = group_names(cfg)
    chosen: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"group pattern {pattern!r} matches none of {names}")
        chosen += [h for h in hits if h not in chosen]
    return [n for n in names if n in chosen]


def optimizer_param_groups(
    model: nn.Module,
    cfg: ModelConfig,
    lr: float,
    lr_by_group: dict[str, float] | None = None,
    frozen: Iterable[str] = (),
) -> list[dict]:
    """Torch optimizer parameter groups with per-group learning rates; frozen groups are left out
    and get ``requires_grad=False``.

    Args:
        lr: learning rate of every group not named in ``lr_by_group``.
        lr_by_group: ``{pattern: lr}``; shell patterns over group names (e.g. ``{"stem": 1e-6,
            "enc0": 1e-6}`` for a slow-stem transfer recipe). Later patterns win.
        frozen: patterns of groups to freeze (e.g. everything but ``"dec*"`` and ``"head"``).

    Returns:
        ``[{"params": [...], "lr": float, "name": str}, ...]`` in group order, empty groups dropped.
    """
    groups = param_groups(model, cfg)
    lrs = dict.fromkeys(groups, lr)
    for pattern, group_lr in (lr_by_group or {}).items():
        for name in select_groups(cfg, [pattern]):
            lrs[name] = group_lr
    frozen_names = set(select_groups(cfg, frozen))
    out = []
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name not in frozen_names)
        if params and name not in frozen_names:
            out.append({"params": params, "lr": lrs[name], "name": name})
    return out
