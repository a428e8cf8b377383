"""Prediction helpers: run-id lookup, label reconstruction, model payloads, ensembles, devices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bratslab.data.labels import probabilities_to_labels, probabilities_to_regions
from bratslab.inference.config import PredictConfig
from bratslab.inference.model_eval import find_run_id
from bratslab.inference.model_loading import (
    ModelPayload,
    build_from_payload,
    build_models,
    check_ensemble,
    load_payload,
    resolve_device,
)


def test_find_run_id_sources(tmp_path, bratslab_home):
    from bratslab.tracking.registry import RegistryError

    assert find_run_id("anything", run_id="abc") == "abc"
    assert find_run_id("runs:/0123abcd/model") == "0123abcd"
    with pytest.raises(RegistryError, match="m-0123"):
        find_run_id("models:/m-0123")  # an unknown logged model is an error, not a guess
    ckpt = tmp_path / "job" / "checkpoint_000003"
    ckpt.mkdir(parents=True)
    assert find_run_id(ckpt) is None
    (tmp_path / "job" / "bratslab_run.json").write_text(json.dumps({"mlflow_run_id": "r1"}))
    assert find_run_id(ckpt) == "r1"


def test_probabilities_to_labels_conventions():
    probs = np.zeros((3, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.8, 0.7]  # WT, TC, ET → ET
    probs[:, 1, 0, 0] = [0.9, 0.2, 0.1]  # WT only → edema (2)
    assert probabilities_to_labels(probs, "regions", 4).ravel().tolist() == [4, 2]
    assert probabilities_to_labels(probs, "regions", 3).ravel().tolist() == [3, 2]
    soft = np.zeros((4, 2, 1, 1), np.float32)
    soft[3, 0] = 1.0  # store ET
    soft[1, 1] = 1.0
    assert probabilities_to_labels(soft, "labels", 4).ravel().tolist() == [4, 1]


def test_probabilities_to_regions_both_outputs():
    probs = np.zeros((3, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.8, 0.7]
    probs[:, 1, 0, 0] = [0.9, 0.2, 0.1]
    regions = probabilities_to_regions(probs, "regions")
    assert regions.dtype == bool and regions[:, :, 0, 0].T.tolist() == [
        [True, True, True],
        [True, False, False],
    ]
    assert not probabilities_to_regions(probs, "regions", threshold=0.95).any()
    soft = np.zeros((4, 2, 1, 1), np.float32)
    soft[3, 0] = 1.0  # store ET: in WT, TC and ET
    soft[2, 1] = 1.0  # edema: WT only
    regions = probabilities_to_regions(soft, "labels")
    assert regions[:, :, 0, 0].T.tolist() == [[True, True, True], [True, False, False]]


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device 'gpu'"):
        resolve_device("gpu")


def test_payload_needs_preprocessing_and_ensembles_must_agree(tmp_path):
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 16]})
    model = build_model(cfg)
    save_model_dir(tmp_path / "a", model, cfg, {"patch_size": [16, 16, 16]})
    with pytest.raises(ValueError, match="model.json: missing 'preprocessing'"):
        load_payload(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_payload(tmp_path / "nowhere")
    info = {"model": cfg.model_dump(mode="json"), "preprocessing": {}, "patch_size": [16] * 3}
    a = ModelPayload(info=info, weights=b"", source="a")
    b = ModelPayload(info={**info, "patch_size": [32] * 3}, weights=b"", source="b")
    check_ensemble([a, a])
    with pytest.raises(ValueError, match="different 'patch_size'"):
        check_ensemble([a, b])
    with pytest.raises(ValueError, match="at least one model"):
        check_ensemble([])


def test_payload_round_trip_rebuilds_the_same_network(tmp_path):
    import torch

    from bratslab.data.config import PreprocessConfig
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 16]})
    model = build_model(cfg).eval()
    extra = {"preprocessing": PreprocessConfig().model_dump(mode="json"), "patch_size": [16] * 3}
    payload = load_payload(save_model_dir(tmp_path / "m", model, cfg, extra))
    assert payload.output == "regions" and payload.source == str(tmp_path / "m")
    rebuilt = build_from_payload(payload)
    assert build_from_payload(payload) is rebuilt  # cached per process by weights hash
    x = torch.rand(1, cfg.in_channels, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_predict_config_validation():
    from bratslab.config import ConfigError, validate

    with pytest.raises(ConfigError, match="tta"):
        validate(PredictConfig, {"tta": "mirror"}, "predict options")
    with pytest.raises(ConfigError, match="overlap"):
        validate(PredictConfig, {"overlap": 1.5}, "predict options")


def test_repeated_models_are_built_once_per_set(tmp_path):
    """Predicting with two ``-m`` models must not rebuild both for every case."""
    import torch

    from bratslab.data.config import PreprocessConfig
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 16]})
    extra = {"preprocessing": PreprocessConfig().model_dump(mode="json"), "patch_size": [16] * 3}
    payloads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
        payloads.append(load_payload(save_model_dir(tmp_path / f"m{seed}", model, cfg, extra)))
    first = build_models(payloads)
    again = build_models(payloads)
    assert len(first) == 2 and all(a is b for a, b in zip(first, again, strict=True))
    assert first[0] is not first[1]
    # Another set replaces the cached one (an actor serves one set at a time).
    assert build_models(payloads[:1])[0] is not first[0]
