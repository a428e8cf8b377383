"""`bratslab models register` and the `--json` listings on a real embedded (SQLite) store with
real logged models (a tiny zoo U-Net logged by model_store.log_model_dir, as training does)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

NAME = "register-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs in a fresh store: ``bare`` logged nothing, ``trained`` logged one model,
    ``resumed`` logged two (as a resumed training run does). Yields (root, runs, model URIs)."""
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model
    from bratslab.tracking import mlflow_runs, model_store

    root = tmp_path_factory.mktemp("register")
    mp = pytest.MonkeyPatch()
    mp.setenv("BRATSLAB_HOME", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    model_dir = save_model_dir(root / "model", build_model(cfg), cfg, {"patch_size": [16] * 3})
    runs, uris = {}, {}
    for name, n_models in (("bare", 0), ("trained", 1), ("resumed", 2)):
        run_id = mlflow_runs.start_run(
            experiment="reg", run_name=name, params={"model": {"arch": "unet"}}
        )
        mlflow_runs.log_metrics(run_id, {"val/dice_mean": 0.6}, step=1)
        uris[name] = [model_store.log_model_dir(model_dir, run_id=run_id) for _ in range(n_models)]
        mlflow_runs.end_run(run_id)
        runs[name] = run_id
    yield root, runs, uris
    mp.undo()


def _cli(*args: str):
    from bratslab.app.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_register_a_train_run_by_id_with_an_alias(store):
    from bratslab.tracking import registry

    _, runs, uris = store
    # The run was never TTA-evaluated: registered, but the alias guard keeps it from champion.
    r = _cli("models", "register", runs["trained"], "--name", NAME, "--alias", "champion")
    assert r.exit_code == 2, r.output
    assert f"registered, but the alias was not moved: {NAME} version 1: no finite value for " \
        "metric 'tta/dice_mean' (is missing)" in r.stderr  # fmt: skip
    assert "Traceback" not in r.output
    with pytest.raises(registry.RegistryError, match="no alias 'champion'"):
        registry.get_version(NAME, alias="champion")
    r = _cli("models", "register", runs["trained"], "--name", NAME, "--alias", "champion",
             "--force")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"registered {uris['trained'][0]} as {NAME} version 2" in r.stdout
    assert f"{NAME}@champion -> version 2" in r.stdout
    info = registry.get_version(NAME, alias="champion")
    assert info.version == "2" and info.run_id == runs["trained"]
    assert f"models:/{info.model_id}" == uris["trained"][0]
    assert info.metrics["val/dice_mean"] == pytest.approx(0.6)  # from the source run


def test_register_takes_the_newest_model_of_a_resumed_run(store):
    from bratslab.tracking import registry

    _, runs, uris = store
    version, source = registry.register_logged_model(runs["resumed"], NAME)
    assert source == uris["resumed"][1] != uris["resumed"][0]
    assert registry.get_version(NAME, version=version).run_id == runs["resumed"]


def test_register_a_logged_model_uri_and_download_it(store, tmp_path):
    from bratslab.models.weights import load_model_dir
    from bratslab.tracking import registry

    _, runs, uris = store
    r = _cli("models", "register", uris["trained"][0], "--name", "by-uri")
    assert r.exit_code == 0, r.output
    assert registry.get_version("by-uri", version=1).run_id == runs["trained"]
    r = _cli("models", "register", runs["trained"][:8], "--name", "by-prefix")  # as tables show
    assert r.exit_code == 0, r.output
    assert registry.get_version("by-prefix", version=1).run_id == runs["trained"]
    r = _cli("models", "download", "by-uri/1", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    _, info = load_model_dir(tmp_path / "m")  # the model's own files at the top
    assert info["patch_size"] == [16, 16, 16]


def test_register_errors_name_the_problem(store):
    from bratslab.tracking import registry

    _, runs, _ = store
    r = _cli("models", "register", runs["bare"], "--name", NAME)
    assert r.exit_code == 2 and f"run {runs['bare']} (bare) has no logged model" in r.stderr
    r = _cli("models", "register", "0" * 32, "--name", NAME)
    assert r.exit_code == 2 and f"no run '{'0' * 32}'" in r.stderr
    r = _cli("models", "register", "models:/m-" + "0" * 32, "--name", NAME)
    assert r.exit_code == 2 and "no logged model 'm-" in r.stderr
    r = _cli("models", "register", "not-a-run", "--name", NAME)
    assert (
        r.exit_code == 2
        and "expected a run id (32 hex digits or a unique prefix) or models:/<model_id>" in r.stderr
    )
    r = _cli("models", "register", runs["trained"])
    assert r.exit_code == 2  # --name is required
    for bad in ("a/b", "a:b", "a@b", "", " x"):  # refused before anything is logged
        r = _cli("models", "register", runs["trained"], "--name", bad)
        assert r.exit_code == 2 and f"invalid registered model name {bad!r}" in r.stderr
        r = _cli("models", "register", "--ensemble", bad, runs["trained"], runs["resumed"])
        assert r.exit_code == 2 and f"invalid registered model name {bad!r}" in r.stderr
    r = _cli("models", "promote", "a/b", "1")
    assert r.exit_code == 2 and "invalid registered model name 'a/b'" in r.stderr
    assert not [m for m in registry.list_models() if m.name in ("a/b", "a:b", "a@b")]


def test_models_and_runs_list_json(store):
    _, runs, _ = store
    r = _cli("models", "register", runs["trained"], "--name", "listed", "--alias", "best",
             "--force")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _cli("models", "list", "--json")
    assert r.exit_code == 0, r.output
    models = {m["name"]: m for m in json.loads(r.stdout)}
    assert models["listed"]["aliases"] == {"best": "1"}
    assert models["listed"]["latest_version"] == "1" and models["listed"]["num_versions"] == 1
    assert models["listed"]["updated"][:4].isdigit()  # ISO 8601

    r = _cli("runs", "list", "--experiment", "reg", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == ["resumed", "trained", "bare"]  # newest first
    trained = rows[1]
    assert trained["run_id"] == runs["trained"] and trained["status"] == "FINISHED"
    assert trained["metrics"] == {"val/dice_mean": 0.6}
    assert trained["params"] == {"model.arch": "unet"}
    assert trained["duration_s"] >= 0 and "T" in trained["start"]

    r = _cli("models", "show", "listed", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["aliases"] == ["best"]
    r = _cli("runs", "list", "--experiment", "nope", "--json")
    assert r.exit_code == 2 and r.stdout == ""
