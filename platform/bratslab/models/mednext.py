"""MedNeXt (Roy et al. 2023, arXiv 2303.09975) on top of MONAI's implementation.

MONAI's :class:`monai.networks.nets.MedNeXt` provides the blocks and the parameter layout (so
state dicts are interchangeable with MONAI's). This subclass only replaces ``forward`` to add what
MONAI lacks: per-block gradient checkpointing, the zoo's deep-supervision contract (a ``list``,
full resolution first) and skipping the auxiliary heads at inference. For CPU,
:func:`use_fast_cpu_layers` swaps MONAI's layers for subclasses with faster CPU paths (~2.8x
faster training steps than MONAI's default, BENCHMARKS.md), which compute the same function with
the same parameters; ``runtime.prepare_model(model, "cpu")`` applies it, so a model on CUDA stays
MONAI's own. :func:`use_monai_layers` swaps them back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks.mednext_block import MedNeXtBlock, MedNeXtUpBlock
from monai.networks.nets import MedNeXt
from torch import nn

from bratslab.models.activation_checkpointing import (
    check_spatial,
    checkpoint_active,
    run_block,
    run_blocks,
)
from bratslab.models.config import MedNeXtConfig
from bratslab.models.depthwise import DepthwiseConv3d, use_fast_depthwise
from bratslab.models.norm import InstanceGroupNorm, use_instance_group_norm
from bratslab.models.transposed import FastConvTranspose3d, use_fast_transposed


class _UpBlock(MedNeXtUpBlock):
    """MONAI's up block, padding once: ``pad(x1 + res)`` instead of ``pad(x1) + pad(res)``
    (the same values; one full-resolution fill and copy fewer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = MedNeXtBlock.forward(self, x)
        if self.resample_do_res:
            x1 = x1 + self.res_conv(x)
        pad = (1, 0) * (x1.ndim - 2)  # the transposed conv gives 2n - 1; MONAI pads in front
        return F.pad(x1, pad)


def use_fast_cpu_layers(model: nn.Module) -> None:
    """Swap MedNeXt's layers in place for subclasses with faster CPU paths; parameters,
    state-dict keys and outputs stay MONAI's (to float rounding):

    * depthwise convolutions: float32 under CPU autocast, fast stride-1 backward
      (:mod:`~bratslab.models.depthwise`);
    * transposed convolutions of the up blocks and heads (:mod:`~bratslab.models.transposed`);
    * per-channel GroupNorm as batch norm for batches of one (:mod:`~bratslab.models.norm`);
    * up blocks pad once.
    """
    use_fast_depthwise(model)
    use_fast_transposed(model)
    use_instance_group_norm(model)
    for module in model.modules():
        if type(module) is MedNeXtUpBlock:
            module.__class__ = _UpBlock


# Each fast layer class -> the PyTorch/MONAI class it stands in for.
_MONAI_CLASSES = {
    DepthwiseConv3d: nn.Conv3d,
    FastConvTranspose3d: nn.ConvTranspose3d,
    InstanceGroupNorm: nn.GroupNorm,
    _UpBlock: MedNeXtUpBlock,
}


def use_monai_layers(model: nn.Module) -> None:
    """Undo :func:`use_fast_cpu_layers` in place: MONAI's and PyTorch's own layers (the
    benchmarks' baseline)."""
    for module in model.modules():
        plain = _MONAI_CLASSES.get(type(module))
        if plain is not None:
            module.__class__ = plain


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
