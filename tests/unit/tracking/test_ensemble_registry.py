"""Ensemble versions (``models register --ensemble``): one registered version whose artifact
folder holds every member, a sha256 tag for every file, and a tampered member refused.

Real tiny models logged and registered on an embedded SQLite store in tmp_path."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

NAME = "ens-test"
PRE = {"modalities": "stub"}  # what the members share; compared, not interpreted here


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _member(tmp_path, k: int, patch=16):
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    torch.manual_seed(k)
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    extra = {"patch_size": [patch] * 3, "preprocessing": PRE}
    return save_model_dir(tmp_path / f"ckpt{k}", build_model(cfg), cfg, extra)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two fold runs (data.fold 0 and 1), each with a logged model; yields (home, run ids,
    their model dirs)."""
    from bratslab.tracking import mlflow_runs, model_store

    home = tmp_path / "home"
    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    ids, dirs = [], []
    for k in (0, 1):
        src = _member(tmp_path, k)
        run_id = mlflow_runs.start_run(
            experiment="ens", run_name=f"j-fold{k}",
            params={"data": {"fold": k, "store": "/data/store"}},
        )  # fmt: skip
        model_store.log_model_dir(src, run_id=run_id)
        mlflow_runs.end_run(run_id)
        ids.append(run_id)
        dirs.append(src)
    return home, ids, dirs


def _invoke(*args):
    from bratslab.app.main import app

    return CliRunner().invoke(app, list(args))


def test_an_ensemble_is_one_version_with_every_member_and_a_hash_per_file(runs, tmp_path):
    from bratslab.tracking import registry

    home, ids, dirs = runs
    r = _invoke("models", "register", "--ensemble", NAME, *ids, "--alias", "champion")
    assert r.exit_code == 2  # never evaluated: registered, but the alias guard refuses it
    assert f"{NAME} version 1: no finite value for metric 'tta/dice_mean'" in r.stderr
    r = _invoke("models", "register", "--ensemble", NAME, *ids, "--alias", "champion", "--force")
    assert r.exit_code == 0, r.output
    assert f"as {NAME} version 2" in r.stdout and "fold0=models:/m-" in r.stdout
    assert registry.get_version(NAME, alias="champion").version == "2"

    info = registry.get_version(NAME, version=1)
    assert info.tags["bratslab.kind"] == "ensemble"
    assert info.tags["bratslab.ensemble.members"] == "fold0,fold1"
    for k, src in enumerate(dirs):
        for f in ("model.pt", "model.json"):
            tag = f"bratslab.sha256.members.fold{k}.{f.replace('.', '_')}"
            assert info.tags[tag] == _sha(src / f)
    assert "bratslab.sha256.model_pt" not in info.tags  # not a single model

    r = _invoke("models", "download", f"{NAME}@champion", str(tmp_path / "dl"))
    assert r.exit_code == 0, r.output
    dl = tmp_path / "dl"
    (folder,) = {p.parent for p in dl.rglob("ensemble.json")}
    assert folder == dl  # self-contained: the model's own files at the top of the folder
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [
        "SHA256SUMS",  # what `models download` verified, for the folder to check itself
        "ensemble.json",
        "members/fold0/model.json", "members/fold0/model.pt",
        "members/fold1/model.json", "members/fold1/model.pt",
        "version.json",  # name, version, aliases, source run, metrics
    ]  # fmt: skip
    assert info.tags["bratslab.sha256.ensemble_json"] == _sha(folder / "ensemble.json")
    described = json.loads((folder / "ensemble.json").read_text())
    assert described["format"] == "bratslab-ensemble/1"
    assert described["store"] == "/data/store"
    assert [m["name"] for m in described["members"]] == ["fold0", "fold1"]
    assert described["members"][1]["files"]["model.pt"] == _sha(dirs[1] / "model.pt")


def test_an_ensemble_version_loads_as_its_member_payloads(runs):
    from bratslab.inference.model_loading import load_payload, member_payloads

    home, ids, dirs = runs
    assert _invoke("models", "register", "--ensemble", NAME, *ids).exit_code == 0
    payload = load_payload(f"models:/{NAME}/1")
    assert payload.info["ensemble"]["members"] == ["fold0", "fold1"]
    members = member_payloads([payload])
    assert [m.weights for m in members] == [(d / "model.pt").read_bytes() for d in dirs]
    assert payload.info["patch_size"] == [16, 16, 16]


def test_a_tampered_member_file_is_refused_naming_the_file_and_both_hashes(runs, tmp_path):
    from bratslab.tracking import model_store

    home, ids, dirs = runs
    assert _invoke("models", "register", "--ensemble", NAME, *ids).exit_code == 0
    (stored,) = [p for p in (home / "mlartifacts").rglob("model.pt") if p.parent.name == "fold1"]
    good = _sha(stored)
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    bad = _sha(stored)
    with pytest.raises(model_store.ModelIntegrityError) as err:
        model_store.fetch_model_dir(f"models:/{NAME}/1")
    message = str(err.value)
    assert "members/fold1/model.pt" in message and good in message and bad in message
    cached = [_sha(p) for p in (home / "cache" / "models").rglob("model.pt")]
    assert bad not in cached  # nothing bad was cached (the members, fetched to build it, are)
    assert not list((home / "cache" / "models").rglob("ensemble.json"))
    r = _invoke("models", "download", f"{NAME}/1", str(tmp_path / "dl"))
    assert r.exit_code == 1 and good in r.stderr and bad in r.stderr, r.output


def test_a_cached_ensemble_is_reverified_and_a_damaged_copy_fetched_again(runs):
    from bratslab.tracking import model_store

    home, ids, dirs = runs
    assert _invoke("models", "register", "--ensemble", NAME, *ids).exit_code == 0
    first = model_store.fetch_model_dir(f"models:/{NAME}/1")
    assert model_store.is_ensemble_dir(first) and first.parent == home / "cache" / "models"
    (first / "members" / "fold0" / "model.pt").write_bytes(b"damaged")
    again = model_store.fetch_model_dir(f"models:/{NAME}/1")
    assert again == first and _sha(again / "members/fold0/model.pt") == _sha(dirs[0] / "model.pt")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--ensemble", NAME, "RUN0"], 2, "at least two members"),
        (["--ensemble", NAME], 2, "two or more models or --cv-run"),
        (["RUN0", "--cv-run", "RUN1", "--name", NAME], 2, "--ensemble NAME"),
        (["RUN0", "RUN1", "--name", NAME], 2, "--ensemble NAME"),
        (["--ensemble", NAME, "nothing-here", "RUN1"], 2, "'nothing-here' has no alias"),
    ],
)
def test_usage_errors_and_unknown_members_exit_2(runs, args, code, message):
    home, ids, dirs = runs
    args = [a.replace("RUN0", ids[0]).replace("RUN1", ids[1]) for a in args]
    r = _invoke("models", "register", *args)
    assert r.exit_code == code and message in r.stderr, r.output
    from bratslab.tracking import registry

    assert NAME not in [m.name for m in registry.list_models()]  # nothing registered


def test_members_that_cannot_be_averaged_are_refused(runs, tmp_path):
    from bratslab.tracking import mlflow_runs, model_store

    home, ids, dirs = runs
    odd = mlflow_runs.start_run(experiment="ens", run_name="odd")
    model_store.log_model_dir(_member(tmp_path / "odd", 2, patch=32), run_id=odd)
    r = _invoke("models", "register", "--ensemble", NAME, ids[0], odd)
    assert r.exit_code == 2 and "different 'patch_size'" in r.stderr, r.output


def test_a_cv_run_registers_its_finished_folds_and_names_a_missing_one(runs):
    from bratslab.tracking import mlflow_runs, registry

    home, ids, dirs = runs
    parent = mlflow_runs.start_run(
        experiment="ens", run_name="j",
        tags={"bratslab.kind": "cv", "bratslab.cv.folds": "0,1,2"},
    )  # fmt: skip
    mlflow_runs.log_metrics(parent, {"cv/mean/val/dice_mean": 0.5}, 0)
    for run_id in ids:
        mlflow_runs.set_tags(run_id, {"mlflow.parentRunId": parent})
    r = _invoke("models", "register", "--ensemble", NAME, "--cv-run", parent)
    assert r.exit_code == 2 and "fold(s) [2] have no finished run" in r.stderr, r.output

    mlflow_runs.set_tags(parent, {"bratslab.cv.folds": "0,1"})
    r = _invoke("models", "register", "--ensemble", NAME, "--cv-run", parent)
    assert r.exit_code == 0, r.output
    info = registry.get_version(NAME, version=1)
    assert info.tags["bratslab.cv_run_id"] == parent
    assert info.metrics["cv/mean/val/dice_mean"] == pytest.approx(0.5)  # via its run
