"""Output contract of every architecture: shapes, deep supervision lists, train vs eval."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_config

from bratslab.config import ConfigError, validate
from bratslab.models.config import ModelConfig
from bratslab.models.zoo import build_model, num_outputs, shape_factor


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("in_channels", [4, 5])
def test_output_shapes(arch, deep_supervision, in_channels):
    cfg = tiny_config(arch, in_channels=in_channels, deep_supervision=deep_supervision)
    model = build_model(cfg)
    x = torch.randn(2, in_channels, 16, 16, 16)

    model.train()
    out = model(x)
    if deep_supervision:
        assert isinstance(out, list)
        assert len(out) == num_outputs(cfg) >= 2
        for i, t in enumerate(out):
            assert t.shape == (2, 3, 16 // 2**i, 16 // 2**i, 16 // 2**i)
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, 3, 16, 16, 16)

    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    assert isinstance(out_eval, torch.Tensor)
    assert out_eval.shape == (2, 3, 16, 16, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_label_output_and_non_cubic_patch(arch):
    cfg = tiny_config(arch, in_channels=4, out_channels=4, output="labels")
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 16, 32, 16))
    assert out.shape == (1, 4, 16, 32, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_ds_full_resolution_output_equals_eval_output(arch):
    # The first deep-supervision output is the same head as inference uses.
    cfg = tiny_config(arch, deep_supervision=True)
    model = build_model(cfg)  # no batch norm or dropout: train and eval compute the same
    x = torch.randn(1, 5, 16, 16, 16)
    model.train()
    train_out = model(x)[0]
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    torch.testing.assert_close(train_out.detach(), eval_out)


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_spatial_size_is_a_clear_error(arch):
    cfg = tiny_config(arch)
    model = build_model(cfg)
    bad = 2**cfg.levels + 1
    with pytest.raises(ValueError, match=f"divisible by {shape_factor(cfg)}"):
        model(torch.randn(1, 5, bad, 16, 16))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="mednext.kernel_size"):
        validate(ModelConfig, {"arch": "mednext", "mednext": {"kernel_size": 4}})
    with pytest.raises(ConfigError, match="unknown key"):
        validate(ModelConfig, {"arch": "unet", "unet": {"filterz": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="out_channels >= 2"):
        validate(ModelConfig, {"output": "labels", "out_channels": 1})
    with pytest.raises(ConfigError, match="expansion has 3 entries"):
        validate(ModelConfig, {"mednext": {"expansion": [2, 3, 4]}})
    with pytest.raises(ConfigError, match="odd number"):
        validate(ModelConfig, {"mednext": {"size": None, "blocks": [1, 1]}})


def test_mednext_presets_and_overrides():
    s = ModelConfig().mednext
    assert s.resolved() == ([2] * 9, [2] * 9)
    b = ModelConfig(mednext={"size": "B", "expansion": 3}).mednext
    assert b.resolved() == ([3] * 9, [2] * 9)
    model = build_model(ModelConfig(mednext={"size": "B", "kernel_size": 5}))
    assert model.enc_stages[1][0].conv2.out_channels == 3 * 64  # B's R for stage 1 is 3
    assert model.enc_stages[0][0].conv1.kernel_size == (5, 5, 5)
    assert model.enc_stages[0][0].do_res  # residual blocks on (MONAI defaults to off)
