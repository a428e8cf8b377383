"""``model.init_from``: a registered model's weights loaded into a new one, as is or via UpKern."""

from __future__ import annotations

import torch
from torch import nn

from bratslab.models.upkern import upkern_state_dict


def init_weights(model: nn.Module, model_cfg, source: dict[str, torch.Tensor]) -> str:
    """Load ``source`` into ``model``: as is when every shape matches, else via UpKern
    (trilinear upsampling of depthwise kernels, k3 → k5). Returns "copy" or "upkern"."""
    target = model.state_dict()
    if set(source) != set(target):
        missing = sorted(set(target) - set(source))[:5]
        extra = sorted(set(source) - set(target))[:5]
        raise ValueError(
            f"model.init_from does not fit model: missing {missing}, unexpected {extra}"
        )
    if all(source[k].shape == target[k].shape for k in target):
        model.load_state_dict(source)
        return "copy"

    model.load_state_dict(upkern_state_dict(source, model))
    return "upkern"
