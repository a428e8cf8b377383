"""Every way to an alias goes through one guard: a version whose selection metric is NaN or
missing never becomes champion by `models register --alias` (single or ensemble), `promote`
or `promote --if-better`.

Real tiny models logged on an embedded SQLite store in tmp_path; runs carry the metrics."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

NAME = "alias-guard"


def _cli(*args: str):
    from bratslab.app.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    return home


@pytest.fixture
def model_dir(tmp_path):
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    extra = {"patch_size": [16] * 3, "preprocessing": {"stub": 1}}
    return save_model_dir(tmp_path / "ckpt", build_model(cfg), cfg, extra)


def _run(model_dir, name: str, metrics: dict, parent: str | None = None, params=None) -> str:
    from bratslab.tracking import mlflow_runs, model_store

    run_id = mlflow_runs.start_run(
        experiment="guard", run_name=name, parent_run_id=parent, params=params
    )
    for key, value in metrics.items():  # NaN too (mlflow_runs.log_metrics skips it)
        mlflow_runs.client().log_metric(run_id, key, value)
    if model_dir is not None:
        model_store.log_model_dir(model_dir, run_id=run_id)
    mlflow_runs.end_run(run_id)
    return run_id


def test_register_alias_refuses_nan_and_missing_like_promote(home, model_dir):
    from bratslab.tracking import registry

    nan = _run(model_dir, "nan", {"tta/dice_mean": math.nan})
    good = _run(model_dir, "good", {"tta/dice_mean": 0.7})
    r = _cli("models", "register", nan, "--name", NAME, "--alias", "champion")
    assert r.exit_code == 2, r.output
    line = r.stderr.strip().splitlines()[-1]  # (above it: MLflow's download progress)
    assert "Traceback" not in r.output
    assert f"{NAME} version 1: no finite value for metric 'tta/dice_mean' (is nan)" in line
    assert "refusing to point alias 'champion'" in line
    with pytest.raises(registry.RegistryError, match="no alias 'champion'"):
        registry.get_version(NAME, alias="champion")
    # The same version through promote and promote --if-better: the same guard, the same line.
    for extra in ((), ("--if-better", "tta/dice_mean")):
        r = _cli("models", "promote", NAME, "1", *extra)
        assert r.exit_code == 2 and "(is nan); refusing to point alias" in r.stderr
    with pytest.raises(registry.AliasRefusedError):
        registry.set_alias(NAME, "1")  # the library call, not only the CLI
    r = _cli("models", "register", good, "--name", NAME, "--alias", "champion")
    assert r.exit_code == 0 and f"{NAME}@champion -> version 2" in r.stdout, r.output
    assert registry.get_version(NAME, alias="champion").version == "2"


def test_a_cv_ensemble_is_guarded_on_its_cross_validated_dice(home, model_dir):
    from bratslab.tracking import registry

    def cv_parent(mean: float) -> str:
        parent = _run(None, "cv", {"cv/mean/val/dice_mean": mean}, params={"data": {"store": "/s"}})
        registry.client().set_tag(parent, registry.KIND_TAG, "cv")
        registry.client().set_tag(parent, registry.CV_FOLDS_TAG, "0,1")
        for k in (0, 1):
            _run(model_dir, f"cv-fold{k}", {}, parent=parent, params={"data": {"fold": k}})
        return parent

    diverged, fine = cv_parent(math.nan), cv_parent(0.65)
    r = _cli("models", "register", "--ensemble", NAME, "--cv-run", diverged, "--alias", "champion")
    assert r.exit_code == 2, r.output
    # NaN is not copied to the ensemble's run: missing there, refused all the same
    assert "no finite value for metric 'cv/mean/val/dice_mean' (is missing)" in r.stderr
    r = _cli("models", "register", "--ensemble", NAME, "--cv-run", fine, "--alias", "champion")
    assert r.exit_code == 0, r.output
    info = registry.get_version(NAME, alias="champion")
    assert info.version == "2" and info.tags["bratslab.selection_metric"] == (
        "cv/mean/val/dice_mean"
    )
