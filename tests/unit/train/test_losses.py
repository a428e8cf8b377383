"""Region Dice+BCE loss with nnU-Net deep-supervision weighting."""

from __future__ import annotations

import pytest
import torch

from bratslab.train.losses import (
    SegmentationLoss,
    deep_supervision_weights,
    labels_to_region_targets,
)


def test_ds_weights_follow_nnunet():
    w = deep_supervision_weights(4)
    assert w == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_region_targets_nest():
    y = torch.tensor([0, 1, 2, 3]).reshape(1, 1, 4, 1, 1)
    r = labels_to_region_targets(y)[0, :, :, 0, 0]
    assert r.tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


def _labels(shape=(2, 1, 8, 8, 8)):
    y = torch.zeros(shape, dtype=torch.uint8)
    y[:, :, 2:6, 2:6, 2:6] = 2
    y[:, :, 3:5, 3:5, 3:5] = 3
    return y


def test_perfect_logits_score_lower_than_wrong_ones():
    y = _labels()
    good = (labels_to_region_targets(y) * 2 - 1) * 20
    loss = SegmentationLoss()
    assert loss(good, y) < 0.01
    assert loss(-good, y) > 1.5


def test_deep_supervision_downsamples_targets_and_reaches_every_output():
    y = _labels()
    outs = [
        torch.zeros(2, 3, 8 // 2**i, 8 // 2**i, 8 // 2**i, requires_grad=True) for i in range(3)
    ]
    total = SegmentationLoss()(outs, y)
    total.backward()
    # the dropped lowest output still gets a (zero) gradient, which DDP needs
    assert all(o.grad is not None for o in outs)
    assert torch.count_nonzero(outs[-1].grad) == 0
    assert torch.count_nonzero(outs[0].grad) > 0
    with torch.no_grad():
        weighted = float(SegmentationLoss(ds_weights=[1, 0, 0])(outs, y))
        assert weighted == pytest.approx(float(SegmentationLoss()(outs[0], y)))


def test_mismatched_weights_are_an_error():
    y = _labels()
    with pytest.raises(ValueError, match="deep_supervision_weights"):
        SegmentationLoss(ds_weights=[1, 0])([torch.zeros(2, 3, 8, 8, 8)] * 3, y)


def test_label_output_uses_softmax_ce():
    y = _labels()
    logits = torch.nn.functional.one_hot(y[:, 0].long(), 4).permute(0, 4, 1, 2, 3).float() * 60
    loss = SegmentationLoss(output="labels")
    assert loss(logits, y) < 0.01
