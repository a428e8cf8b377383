"""Architecture name → network builder.

Every network is a plain ``nn.Module`` producing logits (no activation):

* eval mode: one tensor ``(B, C_out, X, Y, Z)``;
* train mode with ``deep_supervision``: a ``list`` of logits, full resolution
  ``(B, C_out, X, Y, Z)`` first, then lower resolutions
  ``(B, C_out, X / 2**i, Y / 2**i, Z / 2**i)`` for i = 1, 2, ...

The input ``(B, C_in, X, Y, Z)`` float32 must have X, Y, Z divisible by :func:`shape_factor`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bratslab.models.config import ModelConfig


def _mednext(cfg: ModelConfig) -> nn.Module:
    from bratslab.models.mednext import MedNeXtNet

    return MedNeXtNet(
        cfg.mednext, cfg.in_channels, cfg.out_channels, cfg.deep_supervision, cfg.grad_checkpointing
    )


def _unet(cfg: ModelConfig) -> nn.Module:
    from bratslab.models.unet import UNetNet

    return UNetNet(
        cfg.unet, cfg.in_channels, cfg.out_channels, cfg.deep_supervision, cfg.grad_checkpointing
    )


def _segresnet(cfg: ModelConfig) -> nn.Module:
    from bratslab.models.segresnet import SegResNetNet

    return SegResNetNet(
        cfg.segresnet,
        cfg.in_channels,
        cfg.out_channels,
        cfg.deep_supervision,
        cfg.grad_checkpointing,
    )


BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "unet": _unet,
    "segresnet": _segresnet,
    "mednext": _mednext,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network described by ``cfg`` (fresh weights, train mode, float32, on CPU)."""
    try:
        builder = BUILDERS[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose one of {sorted(BUILDERS)}") from None
    return builder(cfg)


def shape_factor(cfg: ModelConfig) -> int:
    """Each spatial size fed to the network must be a multiple of this (``2**levels``)."""
    return 2**cfg.levels


def num_outputs(cfg: ModelConfig) -> int:
    """Number of logits tensors a train-mode forward returns (1 without deep supervision)."""
    if not cfg.deep_supervision:
        return 1
    return cfg.levels + 1 if cfg.arch == "mednext" else cfg.levels
