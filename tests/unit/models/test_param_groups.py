"""Parameter groups cover every parameter exactly once, in a stable order, for every arch."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_config

from bratslab.models.param_groups import (
    group_names,
    optimizer_param_groups,
    param_groups,
    select_groups,
)
from bratslab.models.zoo import build_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_groups_cover_every_parameter_once(arch, deep_supervision):
    cfg = tiny_config(arch, deep_supervision=deep_supervision)
    model = build_model(cfg)
    groups = param_groups(model, cfg)
    assert list(groups) == group_names(cfg)
    assert all(groups[name] for name in groups), "every group holds parameters"
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    levels = cfg.levels
    assert group_names(cfg)[: levels + 2] == [
        "stem",
        *[f"enc{i}" for i in range(levels)],
        "bottleneck",
    ]
    assert ("ds_heads" in groups) == deep_supervision


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_follow_resolution(arch):
    # The stem reads the input channels; the head produces the output channels.
    cfg = tiny_config(arch, in_channels=5)
    groups = param_groups(build_model(cfg), cfg)
    assert any(p.ndim == 5 and p.shape[1] == 5 for p in groups["stem"])
    assert any(p.ndim == 5 and p.shape[:2] in {(3, 4), (4, 3)} for p in groups["head"]) or any(
        p.shape[0] == 3 for p in groups["head"]
    )


def test_transfer_recipe_lrs_and_decoder_only_freezing():
    cfg = tiny_config("mednext")
    model = build_model(cfg)
    opt_groups = optimizer_param_groups(
        model, cfg, lr=1e-4, lr_by_group={"stem": 1e-6, "enc0": 1e-6}
    )
    lrs = {g["name"]: g["lr"] for g in opt_groups}
    assert lrs["stem"] == lrs["enc0"] == 1e-6
    assert all(lr == 1e-4 for name, lr in lrs.items() if name not in ("stem", "enc0"))
    torch.optim.AdamW(opt_groups)  # accepted by a real optimizer

    frozen = [n for n in group_names(cfg) if n not in select_groups(cfg, ["dec0", "head"])]
    opt_groups = optimizer_param_groups(model, cfg, lr=1e-4, frozen=frozen)
    assert [g["name"] for g in opt_groups] == ["dec0", "head"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in opt_groups for p in g["params"]}


def test_unknown_group_pattern_is_an_error():
    cfg = tiny_config("unet")
    with pytest.raises(ValueError, match="decoder"):
        select_groups(cfg, ["decoder"])


def test_model_not_matching_config_is_an_error():
    cfg = tiny_config("unet")
    with pytest.raises(ValueError, match="fits no group"):
        param_groups(build_model(tiny_config("mednext")), cfg)
