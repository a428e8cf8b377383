"""Fixtures of the train-stage unit tests: a tiny preprocessed store and a tiny model config."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A real store (data.synth → data preprocess, in-process): 8 cases of ≈32³ voxels."""
    from bratslab.data.config import PreprocessConfig
    from bratslab.data.runner import run_preprocess
    from bratslab.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("train-store")
    synthesize_dataset(root / "raw", 8, shape=(48, 48, 40), seed=0)
    cfg = PreprocessConfig(min_size=[32, 32, 32], num_folds=4)
    run_preprocess(root / "raw", root / "store", cfg, use_ray=False, progress=False)
    return root / "store"


@pytest.fixture
def tiny_unet_cfg():
    from bratslab.models.config import ModelConfig

    return ModelConfig(arch="unet", deep_supervision=True, unet={"filters": [4, 8, 16]})
