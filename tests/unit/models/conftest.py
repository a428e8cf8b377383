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


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)
