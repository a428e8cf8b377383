"""Segmentation losses: soft Dice + cross-entropy, with nnU-Net-style deep supervision.

``output="regions"`` (default): sigmoid per overlapping region (WT/TC/ET, or the outputs of the
store's profile, e.g. WT/TC/ET/RC), loss = Dice + BCE per region. ``output="labels"``: softmax
over the store's labels ({0,1,2,3}, or {0,...,4} with RC), loss = Dice + CE. Targets are store
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

# Store labels of each output of the BraTS 2021/2023 region models: WT, TC, ET.
LEGACY_MEMBERS: tuple[tuple[int, ...], ...] = ((1, 2, STORE_ET), (1, STORE_ET), (STORE_ET,))


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net weights: 1/2^i for output i (full resolution first), the lowest resolution
    dropped (weight 0) when there are several outputs, normalised to sum 1."""
    w = [1 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def labels_to_region_targets(
    labels: torch.Tensor, members: Sequence[Sequence[int]] = LEGACY_MEMBERS
) -> torch.Tensor:
    """Store labels ``(B, 1, X, Y, Z)`` → float region maps ``(B, R, X, Y, Z)``, channel ``i``
    the union of the labels ``members[i]`` (default WT, TC, ET; a post-treatment store's RC, 4,
    lies outside WT)."""
    y = labels[:, 0]
    maps = []
    for labels_of_region in members:
        m = torch.zeros_like(y, dtype=torch.bool)
        for v in labels_of_region:
            m |= y == v
        maps.append(m)
    return torch.stack(maps, 1).float()


class SegmentationLoss(nn.Module):
    """Dice + (B)CE on one output or a deep-supervision list of outputs.

    Args:
        output: ``"regions"`` (sigmoid WT/TC/ET) or ``"labels"`` (softmax).
        ds_weights: weight per output, full resolution first; default
            :func:`deep_supervision_weights` of however many outputs the model returns.
        dice_weight, ce_weight: weights of the two terms.
        members: store labels of each region output (default WT, TC, ET;
            :class:`bratslab.data.region_set.RegionSet` ``.members`` for a profile's).

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
        members: Sequence[Sequence[int]] = LEGACY_MEMBERS,
    ) -> None:
        super().__init__()
        self.output = output
        self.members = tuple(tuple(m) for m in members)
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
            target = labels_to_region_targets(labels, self.members)
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
