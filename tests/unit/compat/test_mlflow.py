"""The MLflow behaviour bratslab relies on to keep every call on *its* store (checked against
MLflow 3.17.2; these fail loudly if a new MLflow resolves URIs differently).

MLflow builds default clients internally (``register_model``, its SQL registry resolving a
``models:/<model_id>`` source, ``models:/`` downloads, the fluent ``log_model``). Those follow
the process-global URIs: a value set with ``mlflow.set_tracking_uri``, else
``MLFLOW_TRACKING_URI``, else ``./mlflow.db``. :func:`bratslab.tracking.mlflow_runs.global_uris`
steers them with public API only; these tests hold it to that, on real SQLite stores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Two SQLite stores: ``elsewhere`` (what the environment names) and ``ours``."""
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    ours = f"sqlite:///{tmp_path / 'ours.db'}"
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return elsewhere, ours


def test_global_uris_points_mlflow_at_a_store_and_restores_the_environment(
    stores, tmp_path, monkeypatch
):
    import mlflow

    from bratslab.tracking.mlflow_runs import global_uris

    elsewhere, ours = stores
    with global_uris(ours):
        assert mlflow.get_tracking_uri() == ours and mlflow.get_registry_uri() == ours
        mlflow.MlflowClient().create_registered_model("made-by-a-default-client")
    made = [m.name for m in mlflow.MlflowClient(ours, ours).search_registered_models()]
    assert made == ["made-by-a-default-client"]
    assert not (tmp_path / "elsewhere.db").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == elsewhere  # nothing pinned: the environment rules again

    # With nothing set, MLflow's own default must not leak into the environment afterwards
    # (get_settings would take it for the user's choice).
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with global_uris(ours):
        assert mlflow.get_tracking_uri() == ours
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_uri_set_in_code_is_outranked_then_restored(tmp_path):
    """In a fresh process (set_tracking_uri is process-global state)."""
    code = f"""
import json, os, mlflow
from bratslab.tracking.mlflow_runs import global_uris
mine = "sqlite:///{tmp_path}/set-in-code.db"
ours = "sqlite:///{tmp_path}/ours.db"
mlflow.set_tracking_uri(mine)
mlflow.set_registry_uri(mine)
with global_uris(ours):
    inside = [mlflow.get_tracking_uri(), mlflow.get_registry_uri()]
print(json.dumps({{"inside": inside, "after": [mlflow.get_tracking_uri(),
    mlflow.get_registry_uri()], "env": os.environ.get("MLFLOW_TRACKING_URI")}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ours, mine = f"sqlite:///{tmp_path}/ours.db", f"sqlite:///{tmp_path}/set-in-code.db"
    assert result == {"inside": [ours, ours], "after": [mine, mine], "env": mine}


def test_models_uris_resolve_in_the_store_given_not_the_environment(stores, tmp_path):
    """Register a logged model by ``models:/<model_id>`` and by its run, then download the
    version, all in ``ours`` while the environment names another store."""
    from mlflow import MlflowClient

    from bratslab.tracking import registry
    from bratslab.tracking.download import download

    elsewhere, ours = stores
    c = MlflowClient(tracking_uri=ours, registry_uri=ours)
    exp = c.create_experiment("compat", artifact_location=(tmp_path / "art").as_uri())
    run = c.create_run(exp, run_name="r")
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.txt").write_text("ours")
    logged = c.create_logged_model(exp, name="model", source_run_id=run.info.run_id)
    c.log_model_artifacts(logged.model_id, str(src))
    c.finalize_logged_model(logged.model_id, "READY")

    assert registry.register(f"models:/{logged.model_id}", "compat", uri=ours) == "1"
    version, source = registry.register_logged_model(run.info.run_id, "compat", uri=ours)
    assert (version, source) == ("2", f"models:/{logged.model_id}")
    info = registry.get_version("compat", version=1, uri=ours)
    assert info.run_id == run.info.run_id and info.model_id == logged.model_id
    out = download("compat/2", tmp_path / "dl", uri=ours)
    assert (out / "weights.txt").read_text() == "ours"

    assert not (tmp_path / "elsewhere.db").exists()  # the environment's store was never opened
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
