"""Fixtures of the train-stage unit tests: a tiny model config (the tiny store is in
tests/conftest.py, shared with the integration tests)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_unet_cfg():
    from bratslab.models.config import ModelConfig

    return ModelConfig(arch="unet", deep_supervision=True, unet={"filters": [4, 8, 16]})
