"""`bratslab recipe ssa`, shrunk to tiny sizes but through the same code path as the CPU recipe:
synthesise → preprocess → pretrain + register → finetune from the pinned champion + register with
its lineage → post-processing fitted and stored on the finetuned version → held-out shifted cases
predicted with flip TTA and scored, the scores logged to the finetune's MLflow run.
A subprocess in an empty folder with no bratslab, MLflow or Ray variables set."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_readme_journey import clean_env

from bratslab.app.recipe import FINETUNED, LINEAGE_TAG, PRETRAINED
from bratslab.tracking import mlflow_runs, registry

pytestmark = pytest.mark.integration

TINY = [
    "training.epochs=1",
    "training.steps_per_epoch=2",
    "training.patch_size=[32,32,32]",
    "training.val_every=1",
    "data.max_val_cases=1",
    "model.segresnet.blocks_down=[1,1,1]",
]


def test_recipe_pretrains_finetunes_with_lineage_fits_and_scores_heldout_cases(tmp_path):
    argv = [
        "bratslab", "recipe", "ssa",
        "--gli-cases", "3", "--ssa-cases", "4", "--test-cases", "1",
        "--shape", "48", "48", "40",
        "--postprocess",  # off by default; the fit path is the one to cover
    ]  # fmt: skip
    for key in TINY:
        argv += ["--pretrain-set", key, "--finetune-set", key]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=900
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    work = tmp_path / "bratslab-work"
    out, uri = work / "recipe-ssa", f"sqlite:///{work / 'mlflow.db'}"
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in output
    assert "pid=" not in output and "Created version" not in output  # Ray/MLflow in the log

    # the pretrained model is the champion; the finetune started from it, pinned to version 1
    pre = registry.get_version(PRETRAINED, alias="champion", uri=uri)
    assert pre.version == "1"
    fine = registry.get_version(FINETUNED, version="1", uri=uri)
    assert fine.tags[LINEAGE_TAG] == f"models:/{PRETRAINED}/1"
    assert f"models:/{PRETRAINED}/1" in fine.description
    run = mlflow_runs.run_info(fine.run_id, uri=uri)
    assert run["params"]["model.init_from"] == f"models:/{PRETRAINED}/1"
    assert run["params"]["data.store"] == str(out / "store_ssa")
    # the finetuned version holds thresholds fitted on its fold's validation case + a stressed copy
    assert json.loads(fine.tags["bratslab.postprocess"]).keys() >= {"min_size_wt"}
    fitted = json.loads((out / "postprocess_s0.json").read_text())["fit"]
    assert fitted["tta"] == "flips" and any("~stress1" in c for c in fitted["cases"])
    # the held-out shifted case was predicted and scored; its scores are on the finetune's run
    assert len(list((out / "pred_s0").glob("*.nii.gz"))) == 1
    metrics = mlflow_runs.client(uri).get_run(fine.run_id).data.metrics
    for region in ("wt", "tc", "et"):
        assert 0.0 <= metrics[f"heldout/{region}/lesion_dice"] <= 1.0
        assert metrics[f"heldout/{region}/tp"] + metrics[f"heldout/{region}/fn"] >= 1
    assert "held-out shifted cases" in output and "lesion-wise mean" in output
    # the held-out ids are neither training nor finetuning ids
    test_ids = {p.name for p in (out / "test").iterdir()}
    assert not test_ids & {p.name for p in (out / "raw_ssa").iterdir()}
