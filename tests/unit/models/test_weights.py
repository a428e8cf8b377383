"""Model directories round-trip; bad files give errors that name them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHS, tiny_config

from bratslab.config import ConfigError
from bratslab.models.weights import load_model_dir, save_model_dir


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip(tmp_path, arch):
    cfg = tiny_config(arch, in_channels=4)
    from bratslab.models.zoo import build_model

    model = build_model(cfg).to(memory_format=torch.channels_last_3d)
    extra = {"patch_size": [16, 16, 16], "store_fingerprint_hash": "abc"}
    save_model_dir(tmp_path / "m", model, cfg, extra)
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["patch_size"] == [16, 16, 16] and info["model"]["arch"] == arch

    loaded, info2 = load_model_dir(tmp_path / "m")
    assert not loaded.training
    assert info2 == info
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_pickled_object_file_is_refused(tmp_path):
    cfg = tiny_config("unet")
    from bratslab.models.zoo import build_model

    save_model_dir(tmp_path, build_model(cfg), cfg)
    torch.save({"weights": object()}, tmp_path / "model.pt")  # not weights-only
    with pytest.raises(ValueError, match=r"model\.pt: not a weights-only file"):
        load_model_dir(tmp_path)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model_dir(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json: not valid JSON"):
        load_model_dir(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"model": {"arch": "vnet"}}))
    with pytest.raises(ConfigError, match=r"(?s)model\.json.*arch"):
        load_model_dir(tmp_path)


def test_weights_not_fitting_config(tmp_path):
    from bratslab.models.zoo import build_model

    save_model_dir(tmp_path, build_model(tiny_config("unet")), tiny_config("unet"))
    torch.save(build_model(tiny_config("mednext")).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="weights do not fit"):
        load_model_dir(tmp_path)
