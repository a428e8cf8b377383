"""Checkpoint folders: weights-only loadable model dir + train state + job."""

from __future__ import annotations

import json

import torch

from bratslab.models.weights import load_model_dir
from bratslab.models.zoo import build_model
from bratslab.train.checkpoint import (
    load_train_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_checkpoint_round_trip_weights_only(tmp_path, tiny_unet_cfg):
    model = build_model(tiny_unet_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 5, 16, 16, 16))[0].sum().backward()
    opt.step()
    torch.manual_seed(123)
    state = {
        "epoch": 3,
        "global_step": 30,
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "scaler": None,
        "rng": rng_state(),
        "best_dice": 0.5,
    }
    extra = {"patch_size": [16, 16, 16], "store_fingerprint_hash": "abc"}
    save_checkpoint(
        tmp_path,
        model=model,
        model_cfg=tiny_unet_cfg,
        model_extra=extra,
        train_state=state,
        job={"name": "j"},
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "job.json",
        "model.json",
        "model.pt",
        "train_state.pt",
    ]
    loaded = load_train_state(tmp_path)  # torch.load(weights_only=True) inside
    assert loaded["epoch"] == 3 and loaded["best_dice"] == 0.5
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    expected = torch.rand(3)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)
    model2, info = load_model_dir(tmp_path)
    assert info["patch_size"] == [16, 16, 16]
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True)
    )
    assert json.loads((tmp_path / "job.json").read_text()) == {"name": "j"}
