"""An ensemble version loads with plain ``mlflow.pyfunc.load_model("models:/NAME/V")`` and
predicts the mean of its members' probabilities, as ``bratslab predict`` does.

Two tiny randomly initialised members (different seeds), logged and registered as one ensemble
version on an embedded SQLite store in tmp_path; no training, no Ray."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

NAME = "ens-pyfunc"
PATCH = 16


def _member(tmp_path, k: int):
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    torch.manual_seed(k)
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    extra = {"patch_size": [PATCH] * 3, "preprocessing": {"modalities": "stub"}}
    return save_model_dir(tmp_path / f"ckpt{k}", build_model(cfg), cfg, extra)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two member runs with logged models and their ensemble version, made once for the
    module (the store's setup dominates); yields (version, member model dirs, member
    logged-model URIs)."""
    from bratslab.tracking import mlflow_runs, model_store, registry

    tmp_path = tmp_path_factory.mktemp("ens-pyfunc")
    home = tmp_path / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRATSLAB_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        dirs, uris = [], []
        for k in (0, 1):
            dirs.append(_member(tmp_path, k))
            run_id = mlflow_runs.start_run(
                experiment="ens", run_name=f"j-fold{k}", params={"data": {"fold": k}}
            )
            uris.append(model_store.log_model_dir(dirs[-1], run_id=run_id))
            mlflow_runs.end_run(run_id)
        version, _ = registry.register_ensemble(NAME, uris)
        yield version, dirs, uris


def _probabilities(model_dir, x: np.ndarray) -> np.ndarray:
    """One member's probabilities computed directly: one forward pass (``x`` is one patch)."""
    from bratslab.models.weights import load_model_dir

    model, _ = load_model_dir(model_dir)
    with torch.inference_mode():
        return torch.sigmoid(model.eval()(torch.from_numpy(x)[None]))[0].numpy()


def test_an_ensemble_version_predicts_its_members_mean_with_plain_pyfunc(registered):
    version, dirs, uris = registered
    x = np.random.default_rng(0).normal(size=(5, PATCH, PATCH, PATCH)).astype(np.float32)
    members = [_probabilities(d, x) for d in dirs]
    mean = (members[0] + members[1]) / 2

    out = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(x)

    assert out.shape == (3, PATCH, PATCH, PATCH) and out.dtype == np.float32
    np.testing.assert_allclose(out, mean, atol=1e-5)
    for alone in members:  # a real average, not one member passed through
        assert np.abs(out - alone).max() > 1e-3
    single = mlflow.pyfunc.load_model(uris[0]).predict(x)  # a single model: unchanged
    np.testing.assert_allclose(single, members[0], atol=1e-5)


def test_an_ensemble_pyfunc_predicts_a_batch_and_any_volume_size(registered):
    from bratslab.inference.model_loading import load_member_models
    from bratslab.inference.sliding_window import predict_probabilities

    version, dirs, _ = registered
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    x = np.random.default_rng(1).normal(size=(2, 5, 24, 16, 20)).astype(np.float32)

    out = pyfunc.predict(x)

    assert out.shape == (2, 3, 24, 16, 20)
    kw = {"roi_size": [PATCH] * 3, "tta": "none", "amp": False}
    for b in range(2):  # several windows: each member's blended probabilities, averaged
        each = [predict_probabilities(load_member_models(d)[0], x[b], **kw)[0] for d in dirs]
        np.testing.assert_allclose(out[b], (each[0] + each[1]) / 2, atol=1e-5)
