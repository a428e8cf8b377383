"""SegResNet (Myronenko 2018, the BraTS 2018 winner's design) on top of MONAI's ``SegResNetDS``.

``SegResNetDS`` already has deep-supervision heads and returns full resolution first; this
subclass adds per-block gradient checkpointing, computes only the final head at inference and
always returns a ``list`` in train mode with deep supervision (the zoo contract).
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import SegResNetDS

from bratslab.models.activation_checkpointing import (
    check_spatial,
    checkpoint_active,
    run_block,
    run_blocks,
)
from bratslab.models.config import SegResNetConfig


class SegResNetNet(SegResNetDS):
    """Residual encoder (``blocks_down`` per level, last level = bottleneck), light decoder.

    Input ``(B, C_in, X, Y, Z)`` with X, Y, Z divisible by ``2**levels``; output logits
    ``(B, C_out, X, Y, Z)``; in train mode with deep supervision a list of ``levels`` tensors at
    scales 1, 1/2, ..., 1/2**(levels-1).
    """

    def __init__(
        self,
        cfg: SegResNetConfig,
        in_channels: int,
        out_channels: int,
        deep_supervision: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        if cfg.norm == "group":
            # 8 groups as in the paper; fewer when the width does not divide (tiny test models).
            norm: tuple | str = ("group", {"num_groups": math.gcd(8, cfg.init_filters)})
        else:
            norm = cfg.norm
        levels = len(cfg.blocks_down) - 1
        super().__init__(
            spatial_dims=3,
            init_filters=cfg.init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            norm=norm,
            blocks_down=tuple(cfg.blocks_down),
            blocks_up=tuple(cfg.blocks_up) if cfg.blocks_up else None,
            dsdepth=levels if deep_supervision else 1,
        )
        self.levels = levels
        self.deep_supervision = deep_supervision
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_spatial(x, self.levels, "segresnet")
        ckpt = checkpoint_active(self, self.grad_checkpointing)
        want_ds = self.deep_supervision and self.training
        x = self.encoder.conv_init(x)
        skips: list[torch.Tensor] = []
        for level in self.encoder.layers:
            x = run_blocks(level["blocks"], x, ckpt)
            skips.append(x)
            x = level["downsample"](x)  # Identity at the bottleneck level
        x = skips.pop()
        outputs: list[torch.Tensor] = []  # deepest first
        last = len(self.up_layers) - 1
        for i, level in enumerate(self.up_layers):
            x = run_block(level["upsample"], x, ckpt=ckpt) + skips.pop()
            x = run_blocks(level["blocks"], x, ckpt)
            if i == last or (want_ds and last - i < self.dsdepth):
                outputs.append(level["head"](x))
        if want_ds:
            return outputs[::-1]
        return outputs[-1]
