"""The registry module and `models`/`runs` commands on the embedded SQLite store.

Versions here point at plain artifact folders (no logged model), which keeps the test fast;
tests/integration/test_registry_server.py covers real logged models on an `mlflow server`.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

NAME = "embedded-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An embedded store with model NAME: v1 (tta/dice_mean 0.7), v2 (0.9), v3 (no metric)."""
    from mlflow import MlflowClient

    from bratslab.tracking import mlflow_runs

    root = tmp_path_factory.mktemp("embedded")
    mp = pytest.MonkeyPatch()
    mp.setenv("BRATSLAB_HOME", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    c.create_registered_model(NAME)
    runs = []
    for i, dice in enumerate((0.7, 0.9, None), start=1):
        art = root / f"art{i}"
        art.mkdir()
        (art / "weights.txt").write_text(f"version {i}")
        run_id = mlflow_runs.start_run(
            experiment="emb", run_name=f"r{i}", params={"model": {"arch": f"a{i}"}}
        )
        mlflow_runs.log_metrics(run_id, {"val/dice_mean": 0.5 + i / 100}, step=0)
        mlflow_runs.end_run(run_id)
        tags = {} if dice is None else {"tta/dice_mean": repr(dice)}
        c.create_model_version(NAME, source=art.as_uri(), run_id=run_id, tags=tags)
        runs.append(run_id)
    yield root, runs
    mp.undo()


def test_parse_ref():
    from bratslab.tracking.registry import RegistryError, model_uri, parse_ref

    assert parse_ref("m@champion") == ("m", "champion", None)
    assert parse_ref("models:/m/3") == ("m", None, "3")
    assert parse_ref("m") == ("m", "champion", None)
    assert model_uri("m", alias="champion") == "models:/m@champion"
    assert model_uri("m", version=2) == "models:/m/2"
    for bad in ("m@", "@a", "m/x", ""):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_promotion_compares_then_sets(store):
    from bratslab.tracking import registry

    assert registry.promote_if_better(NAME, 1, "tta/dice_mean") is True  # no holder yet
    assert registry.promote_if_better(NAME, 2, "tta/dice_mean") is True  # 0.9 > 0.7
    assert registry.promote_if_better(NAME, 1, "tta/dice_mean") is False  # worse
    assert registry.promote_if_better(NAME, 2, "tta/dice_mean") is True  # already holds it
    assert registry.get_version(NAME, alias="champion").version == "2"
    # A metric from the source run works too (no tag needed); min mode flips the comparison.
    assert registry.promote_if_better(NAME, 3, "val/dice_mean", alias="low", mode="min")
    assert registry.promote_if_better(NAME, 1, "val/dice_mean", alias="low", mode="min")
    assert registry.get_version(NAME, alias="low").version == "1"
    with pytest.raises(registry.AliasRefusedError, match="no finite value"):
        registry.promote_if_better(NAME, 3, "tta/dice_mean")
    with pytest.raises(registry.RegistryError, match="has no version 7"):
        registry.promote_if_better(NAME, 7, "tta/dice_mean")
    with pytest.raises(ValueError, match="mode"):
        registry.promote_if_better(NAME, 1, "tta/dice_mean", mode="up")


def test_get_version_merges_run_and_tag_metrics(store):
    from bratslab.tracking import registry

    _, runs = store
    info = registry.get_version(NAME, version=2)
    assert info.run_id == runs[1]
    assert info.metrics == {"val/dice_mean": pytest.approx(0.52), "tta/dice_mean": 0.9}
    assert info.params == {"model.arch": "a2"}
    assert info.download_uri.startswith("file://") and info.download_uri.endswith("art2")
    with pytest.raises(registry.RegistryError, match="no alias 'nope'"):
        registry.get_version(NAME, alias="nope")
    summary = {m.name: m for m in registry.list_models()}[NAME]
    assert summary.num_versions == 3 and summary.latest_version == "3"
    assert [v.version for v in registry.list_versions(NAME)] == ["3", "2", "1"]
    with pytest.raises(registry.RegistryError, match="no registered model 'ghost'"):
        registry.list_versions("ghost")


def test_source_run_id_of_every_kind_of_model_uri(store):
    from mlflow import MlflowClient

    from bratslab.tracking import registry
    from bratslab.tracking.mlflow_runs import tracking_uri

    _, runs = store
    c = MlflowClient(tracking_uri=tracking_uri())
    exp = c.get_experiment_by_name("emb").experiment_id
    logged = c.create_logged_model(exp, name="m", source_run_id=runs[2])
    assert registry.source_run_id(f"models:/{logged.model_id}") == runs[2]
    assert registry.source_run_id(f"models:/{NAME}/1") == runs[0]
    assert registry.source_run_id(f"runs:/{runs[1]}/model") == runs[1]
    with pytest.raises(registry.RegistryError):
        registry.source_run_id("models:/m-0000000000000000000000000000dead")


def test_cli_on_the_embedded_store(store, tmp_path):
    from bratslab.app.main import app

    _, runs = store
    runner = CliRunner()
    env = {"COLUMNS": "250"}
    r = runner.invoke(app, ["models", "promote", NAME, "2"], env=env)
    assert r.exit_code == 0 and f"{NAME}@champion -> version 2" in r.output
    r = runner.invoke(app, ["models", "show", NAME], env=env)  # default: the champion
    assert r.exit_code == 0 and f"{NAME} version 2" in r.output and runs[1] in r.output
    r = runner.invoke(app, ["models", "download", f"{NAME}/1", str(tmp_path / "v1")], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "v1" / "weights.txt").read_text() == "version 1"
    r = runner.invoke(app, ["runs", "compare", runs[0], runs[2]], env=env)
    assert r.exit_code == 0 and "model.arch" in r.output and "a3" in r.output
    r = runner.invoke(app, ["runs", "compare", runs[0], "0" * 32], env=env)
    assert r.exit_code == 2 and "no run '" + "0" * 32 in r.output
    # Tables show 8 characters of a run id, and those 8 name the run again.
    r = runner.invoke(app, ["runs", "list", "--experiment", "emb"], env=env)
    assert r.exit_code == 0 and all(run[:8] in r.output and run not in r.output for run in runs)
    r = runner.invoke(app, ["runs", "compare", runs[0][:8], runs[2][:8]], env=env)
    assert r.exit_code == 0 and "a3" in r.output, r.output
    r = runner.invoke(app, ["runs", "list", "--sweep", runs[0][:8]], env=env)
    assert r.exit_code == 0, r.output  # a parent run's prefix names the sweep (no trials here)
    for bad, says in (("xyz", "32 hex digits"), ("0000", "no run '0000'")):
        r = runner.invoke(app, ["runs", "compare", runs[0], bad], env=env)
        assert r.exit_code == 2 and says in r.output, r.output


def test_a_run_id_prefix_names_one_run_or_says_which_it_could_be(store):
    from bratslab.tracking.run_ids import is_run_ref, only_match, resolve_run_id

    _, runs = store
    assert resolve_run_id(runs[1][:8]) == runs[1] and resolve_run_id(runs[1].upper()) == runs[1]
    assert resolve_run_id(runs[1]) == runs[1]  # a full id is taken as it is
    assert is_run_ref(runs[0][:4]) and not is_run_ref("abc") and not is_run_ref("champion")
    a, b = "abcd" + "0" * 28, "abcd" + "1" * 28
    with pytest.raises(LookupError, match=r"'abcd' is the start of 2 run ids .*give more"):
        only_match("abcd", [a, b], "here")
    assert only_match("abcd0", [a], "here") == a
    with pytest.raises(LookupError, match="no run 'ffff' in here"):
        only_match("ffff", [], "here")
