"""MedNeXt (Roy et al. 2023, arXiv 2303.09975) on top of MONAI's implementation.

MONAI's :class:`monai.networks.nets.MedNeXt` provides the blocks and the parameter layout (so
state dicts are interchangeable with MONAI's). This subclass only replaces ``forward`` to add what
MONAI lacks: per-block gradient checkpointing, the zoo's deep-supervision contract (a ``list``,
full resolution first), skipping the auxiliary heads at inference, and a faster CPU backward of
the depthwise convolutions (:mod:`bratslab.models.depthwise`).
"""

from __future__ import annotations

import torch
from monai.networks.nets import MedNeXt

from bratslab.models.checkpointing import check_spatial, checkpoint_active, run_block, run_blocks
from bratslab.models.config import MedNeXtConfig
from bratslab.models.depthwise import use_fast_depthwise


class MedNeXtNet(MedNeXt):
    """MedNeXt with residual inverted bottlenecks, optional deep supervision and checkpointing.

    Input ``(B, C_in, X, Y, Z)`` float with X, Y, Z divisible by ``2**levels`` (16 for the
    presets). Output logits ``(B, C_out, X, Y, Z)``; in train mode with deep supervision a list of
    ``levels + 1`` logits tensors at scales 1, 1/2, ..., 1/2**levels.
    """

    def __init__(
        self,
        cfg: MedNeXtConfig,
        in_channels: int,
        out_channels: int,
        deep_supervision: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        expansion, blocks = cfg.resolved()
        levels = len(blocks) // 2
        super().__init__(
            spatial_dims=3,
            init_filters=cfg.init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            encoder_expansion_ratio=expansion[:levels],
            decoder_expansion_ratio=expansion[levels + 1 :],
            bottleneck_expansion_ratio=expansion[levels],
            kernel_size=cfg.kernel_size,
            deep_supervision=deep_supervision,
            # The paper's block is residual; MONAI defaults to no residual connection.
            use_residual_connection=True,
            blocks_down=blocks[:levels],
            blocks_bottleneck=blocks[levels],
            blocks_up=blocks[levels + 1 :],
            norm_type="group",
        )
        self.levels = levels
        self.grad_checkpointing = grad_checkpointing
        # Same parameters, faster CPU backward for the blocks' stride-1 depthwise convolutions.
        use_fast_depthwise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_spatial(x, self.levels, "mednext")
        ckpt = checkpoint_active(self, self.grad_checkpointing)
        want_ds = self.do_ds and self.training
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for stage, down in zip(self.enc_stages, self.down_blocks, strict=True):
            x = run_blocks(stage, x, ckpt)
            skips.append(x)
            x = run_block(down, x, ckpt=ckpt)
        x = run_blocks(self.bottleneck, x, ckpt)
        aux: list[torch.Tensor] = []  # deepest first
        for i, (up, stage) in enumerate(zip(self.up_blocks, self.dec_stages, strict=True)):
            if want_ds:
                aux.append(self.out_blocks[i](x))
            x = run_block(up, x, ckpt=ckpt) + skips[-(i + 1)]
            x = run_blocks(stage, x, ckpt)
        x = self.out_0(x)
        if want_ds:
            return [x, *reversed(aux)]
        return x
