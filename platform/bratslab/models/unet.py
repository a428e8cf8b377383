"""nnU-Net-style U-Net on top of MONAI's :class:`~monai.networks.nets.DynUNet`.

DynUNet builds the layers (and matches nnU-Net's design: conv-instance norm-LeakyReLU twice per
level, strided-conv down-sampling, transposed-conv up-sampling). Its forward is recursive, stores
the auxiliary outputs in a shared list attribute and, with deep supervision, interpolates them to
full resolution and stacks them. This subclass replaces that forward with a loop that returns the
auxiliary logits at their own resolution (the zoo contract) and can checkpoint every block.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

from bratslab.models.activation_checkpointing import check_spatial, checkpoint_active, run_block
from bratslab.models.config import UNetConfig

_NORMS = {
    "instance": ("INSTANCE", {"affine": True}),
    "batch": "BATCH",
    "group": ("GROUP", {"num_groups": 8}),
}


class UNetNet(DynUNet):
    """U-Net with ``len(filters)`` resolution levels (the last one the bottleneck).

    Input ``(B, C_in, X, Y, Z)`` with X, Y, Z divisible by ``2**levels``; output logits
    ``(B, C_out, X, Y, Z)``; in train mode with deep supervision a list of ``levels`` tensors at
    scales 1, 1/2, ..., 1/2**(levels-1) (every decoder level; nnU-Net's layout).
    """

    def __init__(
        self,
        cfg: UNetConfig,
        in_channels: int,
        out_channels: int,
        deep_supervision: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        n = len(cfg.filters)
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[cfg.kernel_size] * n,
            strides=[1] + [2] * (n - 1),
            upsample_kernel_size=[2] * (n - 1),
            filters=list(cfg.filters),
            dropout=cfg.dropout or None,
            norm_name=_NORMS[cfg.norm],
            deep_supervision=deep_supervision,
            deep_supr_num=n - 2,
            res_block=cfg.res_block,
        )
        # The recursive skip-layer view holds the same modules again; the loop below replaces it,
        # and dropping it keeps state-dict keys unique.
        del self.skip_layers
        self.levels = n - 1
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_spatial(x, self.levels, "unet")
        ckpt = checkpoint_active(self, self.grad_checkpointing)
        want_ds = self.deep_supervision and self.training
        x = run_block(self.input_block, x, ckpt=ckpt)
        skips = [x]
        for down in self.downsamples:
            x = run_block(down, x, ckpt=ckpt)
            skips.append(x)
        x = run_block(self.bottleneck, x, ckpt=ckpt)
        by_level: dict[int, torch.Tensor] = {}
        for j, up in enumerate(self.upsamples):  # deepest first
            x = run_block(up, x, skips[-(j + 1)], ckpt=ckpt)
            by_level[len(skips) - 1 - j] = x
        out = self.output_block(x)
        if not want_ds:
            return out
        # head h reads decoder level h + 1 (scale 1/2**(h+1)).
        return [out, *(head(by_level[h + 1]) for h, head in enumerate(self.deep_supervision_heads))]
