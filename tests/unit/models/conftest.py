"""Tiny configurations of every architecture, so unit tests run in seconds on 2 cores."""

from __future__ import annotations

import pytest
import torch

from bratslab.models.config import ModelConfig

# Widths of a few channels; depth/levels as in the real networks where cheap.
TINY = {
    "unet": {"filters": [4, 8, 16, 16]},
    "segresnet": {"init_filters": 4, "blocks_down": [1, 1, 1, 2]},
    "mednext": {"init_filters": 4, "size": None, "blocks": [1, 1, 1, 1, 1, 1, 1]},
}
ARCHS = tuple(TINY)


def tiny_config(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, **{arch: TINY[arch]}, **kw)


def forward_backward(layer: torch.nn.Module, x: torch.Tensor, amp: bool = False) -> list:
    """``[output, input grad, weight grad, bias grad]`` (bias only if the layer has one) of
    ``layer(x)`` under a fixed weighted-sum loss, optionally in bf16 autocast. The output is cast
    to ``x``'s dtype, so a layer that keeps float32 under autocast compares with one that does not.
    """
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = layer(x).to(x.dtype)
    (y * torch.linspace(-1, 1, y.numel(), dtype=x.dtype).reshape(y.shape)).sum().backward()
    params = [p.grad for p in (layer.weight, layer.bias) if p is not None]
    return [y.detach(), x.grad, *params]


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)
