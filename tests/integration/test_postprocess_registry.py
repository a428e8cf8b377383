"""Post-processing thresholds round-trip through the registry: `postprocess fit` on a registered
version stores them (version tag + run artifact); `predict` applies them by default, skips them
with --no-postprocess; `evaluate-model` reports pp/ metrics beside tta/."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app

pytestmark = pytest.mark.integration

NAME = "pp-roundtrip"
REF = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registered(bratslab_home, tiny_store, tmp_path_factory):
    """An untrained tiny U-Net, biased to call every voxel tumour, registered as champion."""
    import torch

    from bratslab.data.store import Store
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model
    from bratslab.tracking import mlflow_runs, model_store, registry

    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    model = build_model(cfg).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():  # sigmoid(20) ≈ 1: one big predicted component per region
        last.weight.zero_()
        last.bias.fill_(20.0)
    extra = {
        "preprocessing": Store(tiny_store).preprocessing.model_dump(mode="json"),
        "patch_size": [32, 32, 32],
    }
    src = save_model_dir(tmp_path_factory.mktemp("ckpt") / "model", model, cfg, extra)
    run_id = mlflow_runs.start_run(experiment="postprocess-test", run_name="tiny")
    uri = model_store.log_model_dir(src, run_id=run_id)
    version = registry.register(uri, NAME, {"tta/dice_mean": 0.5})  # the alias guard's metric
    registry.set_alias(NAME, version)
    return run_id


def test_thresholds_round_trip_through_the_registry(
    registered, tiny_store, bratslab_home, tmp_path, ray_cluster
):
    from bratslab.inference.model_eval import evaluate_model
    from bratslab.postprocess.config import PostprocessConfig, load_config_file
    from bratslab.postprocess.resolve import thresholds_for_model
    from bratslab.tracking import mlflow_runs, postprocess_store, registry

    runner = CliRunner()
    out = tmp_path / "postprocess.json"
    res = runner.invoke(
        app,
        ["postprocess", "fit", "--model", REF, "--store", str(tiny_store), "--fold", "0",
         "--tta", "none", "--stress", "1", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "WT" in res.stdout and "before" in res.stdout and f"{NAME} version 1" in res.stdout
    doc = json.loads(out.read_text())
    # Each of the fold's 2 validation cases, then its scanner-stressed copy.
    cases = doc["fit"]["cases"]
    assert doc["fit"]["fold"] == 0 and doc["fit"]["stress"] == 1 and len(cases) == 4
    assert cases[1] == f"{cases[0]}~stress1" and cases[3] == f"{cases[2]}~stress1"
    fitted = load_config_file(out)
    # The version carries the thresholds; the run holds the file.
    assert thresholds_for_model(REF) == fitted == thresholds_for_model(f"models:/{NAME}/1")
    (artifact,) = (bratslab_home / "mlartifacts").rglob("postprocess/postprocess.json")
    assert json.loads(artifact.read_text()) == doc
    assert registry.get_version(NAME, version=1).tags[postprocess_store.POSTPROCESS_TAG]

    # Thresholds that delete everything make the effect plain: store them on the version.
    wipe = PostprocessConfig(min_size_wt=10**9)
    json_file = tmp_path / "wipe.json"
    json_file.write_text(json.dumps({"config": wipe.model_dump()}))
    postprocess_store.save_thresholds(REF, wipe.model_dump(), {}, json_file)

    raw = tmp_path / "raw"
    first = sorted(p for p in (tiny_store.parent / "raw").iterdir() if p.is_dir())[0]
    shutil.copytree(first, raw / first.name)
    outputs = {}
    for label, extra in (("default", []), ("off", ["--no-postprocess"])):
        pred = tmp_path / f"pred-{label}"
        args = ["predict", "--model", REF, "--input", str(raw), "--output", str(pred)]
        res = runner.invoke(app, [*args, "--tta", "none", "--workers", "1", *extra])
        assert res.exit_code == 0, res.output
        outputs[label] = np.asarray(nib.load(pred / f"{first.name}.nii.gz").dataobj)
    assert outputs["off"].any() and not outputs["default"].any()
    # The short form NAME@ALIAS is the same model, thresholds included, with a one-line hint.
    pred = tmp_path / "pred-short"
    short = ["--model", f"{NAME}@champion", "--input", str(raw), "--output", str(pred)]
    res = runner.invoke(app, ["predict", *short, "--tta", "none", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert f"read as {REF}: write registered models that way" in res.output
    got = np.asarray(nib.load(pred / f"{first.name}.nii.gz").dataobj)
    np.testing.assert_array_equal(got, outputs["default"])

    # A downloaded version is self-contained: `predict --model FOLDER` gives the very label maps
    # of the registry reference, its thresholds included (and skips them as asked).
    folder = tmp_path / "downloaded"
    res = runner.invoke(app, ["models", "download", REF, str(folder)])
    assert res.exit_code == 0, res.output
    names = {"model.pt", "model.json", "postprocess.json", "version.json", "SHA256SUMS"}
    assert {p.name for p in folder.iterdir()} == names
    assert "  postprocess.json\n" in (folder / "SHA256SUMS").read_text()
    version_doc = json.loads((folder / "version.json").read_text())
    assert (version_doc["name"], version_doc["version"]) == (NAME, "1")
    assert version_doc["aliases"] == ["champion"] and version_doc["metrics"]["tta/dice_mean"] == 0.5
    assert str(bratslab_home) not in (folder / "version.json").read_text()  # nothing machine-local
    for label, extra in (("default", []), ("off", ["--no-postprocess"])):
        pred = tmp_path / f"pred-folder-{label}"
        args = ["predict", "--model", str(folder), "--input", str(raw), "--output", str(pred)]
        res = runner.invoke(app, [*args, "--tta", "none", "--workers", "1", *extra])
        assert res.exit_code == 0, res.output
        got = np.asarray(nib.load(pred / f"{first.name}.nii.gz").dataobj)
        np.testing.assert_array_equal(got, outputs[label])
    # The thresholds are covered by the folder's checksums like the weights are.
    (folder / "postprocess.json").write_text(json.dumps({"config": {}}))
    res = runner.invoke(
        app,
        ["predict", "--model", str(folder), "--input", str(raw), "--output", str(tmp_path / "x")],
    )
    assert res.exit_code != 0 and "postprocess.json" in res.output

    metrics = evaluate_model(REF, tiny_store, 0, "none", max_cases=1)
    assert metrics["tta/dice_wt"] > 0.0 and metrics["pp/dice_wt"] == 0.0
    assert metrics["pp/cases"] == 1.0
    logged = mlflow_runs.run_info(registered)["metrics"]
    assert logged["pp/lesion_dice_mean"] == pytest.approx(metrics["pp/lesion_dice_mean"])
    plain = evaluate_model(REF, tiny_store, 0, "none", max_cases=1, postprocess="none")
    assert not any(k.startswith("pp/") for k in plain)
