"""MLflow model logging (pyfunc from code + weights-only model dir) and fetching by any ref."""

from __future__ import annotations

import pytest
import torch

from bratslab.models.weights import save_model_dir
from bratslab.models.zoo import build_model


@pytest.fixture
def logged(bratslab_home, tiny_unet_cfg, tmp_path):
    from bratslab.tracking import mlflow_runs, model_store

    model = build_model(tiny_unet_cfg)
    src = save_model_dir(tmp_path / "ckpt", model, tiny_unet_cfg, {"patch_size": [16, 16, 16]})
    (src / "train_state.pt").write_bytes(b"not part of the model")
    run_id = mlflow_runs.start_run(
        experiment="test-model-store", run_name="r", params={"a": {"b": 1}}, tags={"t": "1"}
    )
    uri = model_store.log_model_dir(src, run_id=run_id)
    return model, run_id, uri


def _same_weights(model, folder):
    sd = torch.load(folder / "model.pt", weights_only=True)
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_fetch_by_every_reference(logged):
    from bratslab.tracking import mlflow_runs, model_store

    model, run_id, uri = logged
    assert uri.startswith("models:/") and model_store.model_id_of(uri)
    client = mlflow_runs.client()
    client.create_registered_model("test-seg")
    mv = client.create_model_version(
        "test-seg", uri, run_id=run_id, model_id=model_store.model_id_of(uri)
    )
    client.set_registered_model_alias("test-seg", "champion", mv.version)
    for ref in (
        uri,
        f"runs:/{run_id}/model",
        f"models:/test-seg/{mv.version}",
        "models:/test-seg@champion",
    ):
        folder = model_store.fetch_model_dir(ref)
        assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.pt"], ref
        assert _same_weights(model, folder), ref
    assert model_store.fetch_model_dir(folder) == folder  # a local dir is returned as is


def test_logged_model_predicts_any_volume_size(logged):
    import mlflow

    _, _, uri = logged
    pyfunc = mlflow.pyfunc.load_model(uri)
    import numpy as np

    out = pyfunc.predict(np.random.rand(5, 20, 24, 16).astype(np.float32))
    assert out.shape == (3, 20, 24, 16)
    assert out.min() >= 0 and out.max() <= 1


def test_bad_references_fail_clearly(bratslab_home, tmp_path):
    from bratslab.tracking import model_store

    with pytest.raises(FileNotFoundError, match="not a model directory"):
        model_store.fetch_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot download"):
        model_store.fetch_model_dir("models:/no-such-model/3")
    with pytest.raises(ValueError, match="expected a model directory"):
        model_store.fetch_model_dir("s3://bucket/x")


def test_logging_leaves_the_tracking_environment_alone(bratslab_home, tiny_unet_cfg, tmp_path):
    """MLflow's global URI is restored exactly: no MLFLOW_TRACKING_URI appears or changes."""
    import os

    from bratslab.tracking import mlflow_runs, model_store

    src = save_model_dir(tmp_path / "c", build_model(tiny_unet_cfg), tiny_unet_cfg, {})
    before = os.environ.get("MLFLOW_TRACKING_URI")
    store_uri = before
    os.environ.pop("MLFLOW_TRACKING_URI")
    try:
        run_id = mlflow_runs.start_run(experiment="env", run_name="r", uri=store_uri)
        model_store.log_model_dir(src, run_id=run_id, uri=store_uri)
        assert "MLFLOW_TRACKING_URI" not in os.environ
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = before


def test_source_run_of_a_logged_model(logged):
    from bratslab.inference.model_eval import find_run_id

    _, run_id, uri = logged
    assert uri.startswith("models:/m-")
    assert find_run_id(uri) == run_id


def test_local_model_dir_resolves_without_importing_mlflow(tiny_unet_cfg, tmp_path):
    """The one resolver serves `bratslab predict --model ckpt/` too: a local folder must not
    pay for importing MLflow, and a missing one is named."""
    import subprocess
    import sys

    folder = save_model_dir(tmp_path / "ckpt", build_model(tiny_unet_cfg), tiny_unet_cfg, {})
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bratslab.tracking.model_store import fetch_model_dir\n"
        f"assert fetch_model_dir({str(folder)!r}) == Path({str(folder)!r})\n"
        "try:\n"
        f"    fetch_model_dir({str(tmp_path / 'nowhere')!r})\n"
        "except FileNotFoundError as e:\n"
        "    print(e)\n"
        "print('mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    missing, imported = out.stdout.strip().splitlines()
    assert (
        missing == f"{tmp_path / 'nowhere'}: not a model directory (needs model.pt and model.json)"
    )
    assert imported == "False"
