"""Registered model files are verified (sha256 version tags) and cached by content.

A real tiny model logged and registered on an embedded SQLite store in tmp_path; the artifact
store is then tampered with the way an overwrite of ``model.pt`` would."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from typer.testing import CliRunner

NAME = "integrity-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh store with one registered version of a tiny U-Net; yields (home, model_dir)."""
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model
    from bratslab.tracking import mlflow_runs, model_store, registry

    home = tmp_path / "home"
    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    src = save_model_dir(tmp_path / "ckpt", build_model(cfg), cfg, {"patch_size": [16] * 3})
    run_id = mlflow_runs.start_run(experiment="integrity", run_name="r")
    uri = model_store.log_model_dir(src, run_id=run_id)
    version = registry.register(uri, NAME, {"tta/dice_mean": 0.8})
    registry.set_alias(NAME, version)
    return home, src


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored_weights(home):
    """model.pt inside the artifact store (the logged model's folder)."""
    (found,) = (home / "mlartifacts").rglob("model.pt")
    return found


def test_registration_records_the_sha256_of_both_files(store):
    from bratslab.tracking import registry

    _, src = store
    info = registry.get_version(NAME, version=1)
    assert info.tags["bratslab.sha256.model_pt"] == _sha(src / "model.pt")
    assert info.tags["bratslab.sha256.model_json"] == _sha(src / "model.json")
    assert not any(k.startswith("bratslab.") for k in info.metrics)  # hashes are not metrics


def test_an_overwritten_model_pt_is_refused_naming_the_file_and_both_hashes(store, tmp_path):
    from bratslab.app.main import app
    from bratslab.tracking import model_store

    home, src = store
    stored = _stored_weights(home)
    good = _sha(stored)
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    bad = _sha(stored)
    for ref in (f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        with pytest.raises(model_store.ModelIntegrityError) as err:
            model_store.fetch_model_dir(ref)
        message = str(err.value)
        assert ref in message and "model.pt" in message and good in message and bad in message
    assert not [p for p in (home / "cache" / "models").iterdir()]  # nothing bad was cached

    runner = CliRunner()
    r = runner.invoke(app, ["models", "download", f"{NAME}@champion", str(tmp_path / "dl")])
    assert r.exit_code == 1 and good in r.stderr and bad in r.stderr, r.output
    assert not (tmp_path / "dl").exists()
    from bratslab.data.synth import synthesize_dataset

    synthesize_dataset(tmp_path / "in", 1, shape=(24, 24, 16), seed=0)  # predict checks it first
    r = runner.invoke(
        app,
        ["predict", "--model", f"models:/{NAME}@champion", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "pred")],
    )  # fmt: skip
    assert r.exit_code == 1 and good in r.stderr and bad in r.stderr, r.output


def test_the_cache_is_content_addressed_and_reused(store, monkeypatch):
    from bratslab.tracking import mlflow_runs, model_store

    home, src = store
    cache = home / "cache" / "models"
    first = model_store.fetch_model_dir(f"models:/{NAME}@champion")
    assert first == cache / _sha(src / "model.pt")[:16]
    assert sorted(p.name for p in first.iterdir()) == ["model.json", "model.pt"]

    downloads = []
    real = mlflow_runs.download_artifacts

    def counting(*args, **kwargs):
        downloads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow_runs, "download_artifacts", counting)
    assert model_store.fetch_model_dir(f"models:/{NAME}/1") == first
    assert model_store.fetch_model_dir(f"models:/{NAME}@champion") == first
    assert downloads == []  # served from the verified cache
    assert [p.name for p in cache.iterdir()] == [first.name]  # one folder, no temp leftovers

    # A damaged cache entry is dropped and downloaded again, not served.
    (first / "model.pt").write_bytes(b"damaged")
    assert model_store.fetch_model_dir(f"models:/{NAME}@champion") == first
    assert _sha(first / "model.pt") == _sha(src / "model.pt") and len(downloads) == 1


def _predict(model: str, tmp_path, out: str = "pred"):
    from bratslab.app.main import app
    from bratslab.data.synth import synthesize_dataset

    if not (tmp_path / "in").is_dir():  # a real (tiny) case: predict checks its input first
        synthesize_dataset(tmp_path / "in", 1, shape=(24, 24, 16), seed=0)
    return CliRunner().invoke(
        app,
        ["predict", "--model", model, "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / out)],
    )  # fmt: skip


def test_every_remote_path_to_the_weights_checks_the_sha256_recorded_at_logging(store, tmp_path):
    """models:/m-<id>, runs:/<run>/model, a bare run id (and registering the logged model
    anew) check the hashes the logged model was tagged with when it was logged; the cache is
    cleared first, as an attacker would."""
    from bratslab.tracking import model_store, registry

    home, src = store
    info = registry.get_version(NAME, version=1)
    logged = f"models:/{info.model_id}"
    good = _sha(src / "model.pt")
    tags = registry.client().get_logged_model(info.model_id).tags
    assert tags["bratslab.sha256.model_pt"] == good  # recorded when it was logged
    stored = _stored_weights(home)
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    bad = _sha(stored)
    for ref in (logged, f"runs:/{info.run_id}/model", info.run_id):
        shutil.rmtree(home / "cache", ignore_errors=True)
        with pytest.raises(model_store.ModelIntegrityError) as err:
            model_store.fetch_model_dir(ref)
        assert ref in str(err.value) and good in str(err.value) and bad in str(err.value)
    with pytest.raises(model_store.ModelIntegrityError):
        registry.register(logged, NAME)  # not registered with the tampered file's hash
    assert [v.version for v in registry.list_versions(NAME)] == ["1"]

    r = _predict(logged, tmp_path)
    assert r.exit_code == 1 and good in r.stderr and bad in r.stderr, r.output
    assert "Traceback" not in r.output and not (tmp_path / "pred").exists()
    # MLflow's own loader: the pyfunc checks the SHA256SUMS logged beside the files.
    import mlflow

    from bratslab.tracking.mlflow_runs import global_uris

    with (
        global_uris(registry.tracking_uri()),
        pytest.raises(model_store.ModelIntegrityError, match="SHA256SUMS"),
    ):
        mlflow.pyfunc.load_model(logged)


def test_a_downloaded_folder_checks_its_sha256sums_and_one_without_is_loaded_as_is(store, tmp_path):
    from bratslab.tracking import model_store
    from bratslab.tracking.download import download

    _, src = store
    folder = download(f"{NAME}@champion", tmp_path / "dl")
    (model_dir,) = {p.parent for p in folder.rglob("SHA256SUMS")}
    sums = (model_dir / "SHA256SUMS").read_text()
    assert f"{_sha(src / 'model.pt')}  model.pt\n" in sums and "  model.json\n" in sums
    assert model_store.fetch_model_dir(model_dir) == model_dir  # checked, unchanged

    weights = model_dir / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(model_store.ModelIntegrityError, match="SHA256SUMS"):
        model_store.fetch_model_dir(model_dir)
    r = _predict(str(model_dir), tmp_path)
    assert r.exit_code == 1 and _sha(weights) in r.stderr and "Traceback" not in r.output
    # Without a manifest a folder is the user's own files: loaded as they are.
    (model_dir / "SHA256SUMS").unlink()
    assert model_store.fetch_model_dir(model_dir) == model_dir
