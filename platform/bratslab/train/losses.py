"""Segmentation losses: soft Dice + cross-entropy, with nnU-Net-style deep supervision.

``output="regions"`` (default): sigmoid per overlapping region WT/TC/ET, loss = Dice + BCE per
region. ``output="labels"``: softmax over labels {0,1,2,3}, loss = Dice + CE. Targets are store
labels ``(B, 1, X, Y, Z)``; for each lower-resolution deep-supervision output they are resized
with nearest neighbour (label maps must stay labels), then turned into regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from bratslab.data.labels import STORE_ET


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net weights: 1/2^i for output i (full resolution first), the lowest resolution
    dropped (weight 0) when there are several outputs, normalised to sum 1."""
    w = [1 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def labels_to_region_targets(labels: torch.Tensor) -> torch.Tensor:
    """Store labels ``(B, 1, X, Y, Z)`` → float region maps ``(B, 3, X, Y, Z)`` (WT, TC, ET)."""
    y = labels[:, 0]
    wt = (y > 0) & (y <= STORE_ET)  # a post-treatment store's RC (4) lies outside WT
    tc = (y == 1) | (y == STORE_ET)
    et = y == STORE_ET
    return torch.stack([wt, tc, et], 1).float()


class SegmentationLoss(nn.Module):
    """Dice + (B)CE on one output or a deep-supervision list of outputs.

    Args:
        output: ``"regions"`` (sigmoid WT/TC/ET) or ``"labels"`` (softmax).
        ds_weights: weight per output, full resolution first; default
            :func:`deep_supervision_weights` of however many outputs the model returns.
        dice_weight, ce_weight: weights of the two terms.

    ``forward(logits, labels)``: ``logits`` ``(B, C, X, Y, Z)`` or a list of such tensors at
    decreasing resolution; ``labels`` ``(B, 1, X, Y, Z)`` integer store labels. Returns a scalar
    float32 loss (computed in float32 whatever the autocast dtype of ``logits``).
    """

    def __init__(
        self,
        output: str = "regions",
        ds_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.output = output
        self.ds_weights = list(ds_weights) if ds_weights is not None else None
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        # batch=True: Dice pooled over the batch (nnU-Net "batch dice"), so patches without
        # ET do not produce a 0/0 term per sample.
        if output == "regions":
            self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        else:
            self.dice = DiceLoss(
                softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
            )

    def single(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if labels.shape[2:] != logits.shape[2:]:
            labels = F.interpolate(labels.float(), size=logits.shape[2:], mode="nearest")
        if self.output == "regions":
            target = labels_to_region_targets(labels)
            ce = F.binary_cross_entropy_with_logits(logits, target)
            dice = self.dice(logits, target)
        else:
            target = labels.long()
            ce = F.cross_entropy(logits, target[:, 0])
            dice = self.dice(logits, target)
        return self.dice_weight * dice + self.ce_weight * ce

    def forward(
        self, logits: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.single(logits, labels)
        weights = self.ds_weights or deep_supervision_weights(len(logits))
        if len(weights) != len(logits):
            raise ValueError(
                f"training.deep_supervision_weights has {len(weights)} entries but the model "
                f"returns {len(logits)} outputs"
            )
        total = logits[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, logits, strict=True):
            # A zero weight still joins the graph: DDP expects a gradient (zero) for every
            # trainable parameter, including the dropped head's.
            total = total + w * self.single(out, labels)
        return total
