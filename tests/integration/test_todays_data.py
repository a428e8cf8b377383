"""Today's data end to end on the session's Ray instance and MLflow store, real .nii.gz files:

- BraTS 2024+ post-treatment glioma (labels NETC 1, SNFH 2, ET 3, RC 4): ``data synth
  --profile gli-post`` → validate → preprocess → train (four outputs: WT, TC, ET, RC; selected
  by panoptica) → ``evaluate-model`` (six regions, both families) → ``postprocess fit`` (a size
  per region) → sweep (champion registered) → predict with the profile's thresholds (labels
  1–4 in the source geometry) → evaluate with both lesion-wise families → ``export rle``;
- an nnU-Net raw dataset (``dataset.json`` with regions, ``_000X`` channel files, nnU-Net's
  BraTS values 1 ED, 2 NCR, 3 ET, ``splits_final.json``) → preprocess with ``--splits`` (the
  store's folds are nnU-Net's) → train → predict ``imagesTs`` into nnU-Net's naming and values.

Training is one epoch of two steps: the tests check where every label goes, not how good the
model is; the written label maps are checked against the probability maps written beside them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
SWEEP_JOB = JOB.with_name("sweep_smoke.yaml")
SHAPE = ["48", "48", "40"]
SMALL = ["--min-size", "32"]  # volumes stay ≈ their brain's size (not padded to 128³)
TRAIN = ["--set", "training.epochs=1", "--set", "training.steps_per_epoch=2",
         "--set", "data.max_val_cases=1", "--set", "scaling.num_workers=1"]  # fmt: skip


def _invoke(*args: str):
    from bratslab.app.main import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _trained_checkpoint(bratslab_home: Path, name: str) -> Path:
    """The best checkpoint folder of a finished run (model.json + model.pt)."""
    ckpts = sorted((bratslab_home / "ray_results" / name).glob("epoch*/model.json"))
    assert ckpts, f"no checkpoint under {bratslab_home / 'ray_results' / name}"
    return ckpts[-1].parent


def _painted(probs: np.ndarray, paint: list[int]) -> np.ndarray:
    """Region probabilities ``(X, Y, Z, R)`` → the label map predict must write: each region
    (threshold 0.5) painted with its label in order, later ones winning."""
    out = np.zeros(probs.shape[:3], dtype=np.uint8)
    for i, label in enumerate(paint):
        out[probs[..., i] >= 0.5] = label
    return out


POST_REGIONS = ("et", "netc", "snfh", "rc", "tc", "wt")


def test_post_treatment_cases_train_sweep_predict_evaluate_and_export(
    ray_cluster, bratslab_home, tmp_path
):
    from bratslab.data.store import Store

    raw, store = tmp_path / "raw", tmp_path / "store"
    _invoke("data", "synth", raw, "--profile", "gli-post", "--cases", "5", "--shape", *SHAPE)
    _invoke("data", "validate", raw)
    _invoke("data", "preprocess", raw, store, "--folds", "2", *SMALL)
    assert Store(store).profile.name == "brats2024-gli"

    ckpt = _train_post_treatment(bratslab_home, store)
    _fit_post_treatment_thresholds(ckpt, store, tmp_path / "fitted.json")
    champion = _sweep_post_treatment(store)
    pred = _predict_post_treatment(champion, raw, tmp_path)
    _score_and_export_post_treatment(pred, raw, tmp_path)


def _train_post_treatment(bratslab_home: Path, store: Path) -> Path:
    """train: four outputs, six regions validated, selected by panoptica; evaluate-model."""
    from bratslab.tracking.mlflow_runs import run_info

    name = "post-it"
    # selected by the organisers' lesion-wise Dice (panoptica) over the six regions
    _invoke("train", JOB, "--name", name, "--set", f"data.store={store}", *TRAIN,
            "--set", "training.val_lesionwise=panoptica",
            "--set", "training.selection_metric=val/lesion_dice_mean")  # fmt: skip
    # the epoch line names every region of the profile, RC included
    epoch_line = (bratslab_home / "ray_results" / name / "train_log.txt").read_text()
    assert "RC " in epoch_line and "NETC " in epoch_line, epoch_line
    ckpt = _trained_checkpoint(bratslab_home, name)
    info = json.loads((ckpt / "model.json").read_text())
    assert info["model"]["out_channels"] == 4
    assert info["regions"] == ["wt", "tc", "et", "rc"] and info["profile"] == "brats2024-gli"
    state = bratslab_home / "ray_results" / name / "bratslab_run.json"
    run_id = json.loads(state.read_text())["mlflow_run_id"]
    metrics = run_info(run_id)["metrics"]
    for region in POST_REGIONS:
        assert f"val/dice_{region}" in metrics and f"best/val/dice_{region}" in metrics
        assert 0.0 <= metrics[f"val/lesion_dice_{region}"] <= 1.0
    assert metrics["val/dice_mean"] == pytest.approx(
        np.mean([metrics[f"val/dice_{r}"] for r in POST_REGIONS])
    )
    # evaluate-model scores the six regions in store space (logged as tta/ to the run)
    _invoke("evaluate-model", "--model", ckpt, "--store", store, "--fold", "0",
            "--tta", "none", "--max-cases", "1")  # fmt: skip
    tta = run_info(run_id)["metrics"]
    assert {f"tta/lesion_dice_{r}" for r in ("rc", "netc", "snfh")} <= set(tta), sorted(tta)
    r = _invoke("evaluate-model", "--model", ckpt, "--store", store, "--fold", "0", "--tta",
                "none", "--max-cases", "1", "--metric", "panoptica", "--no-log")  # fmt: skip
    assert "tta/lesion_dice_rc" in r.output
    return ckpt


def _fit_post_treatment_thresholds(ckpt: Path, store: Path, out: Path) -> None:
    """postprocess fit: a minimum size per region of the profile, not WT/TC/ET's fields."""
    _invoke("postprocess", "fit", "--model", ckpt, "--store", store, "--fold", "0", "--tta",
            "none", "--max-cases", "1", "--no-register", "-o", out)  # fmt: skip
    config = json.loads(out.read_text())["config"]
    assert config["profile"] == "brats2024-gli" and set(config["min_size"]) <= set(POST_REGIONS)
    assert not any(config[k] for k in ("min_size_wt", "min_size_tc", "min_size_et"))


def _sweep_post_treatment(store: Path) -> str:
    """sweep (one trial): TTA re-evaluation by panoptica, the champion registered."""
    from bratslab.tracking import registry

    name = "post-it-sweep"
    _invoke("sweep", SWEEP_JOB, "--set", f"data.store={store}", "--set", "sweep.num_trials=1",
            "--set", "sweep.max_concurrent=1", "--set", "sweep.top_k=1",
            "--set", "sweep.tta=none", "--set", f"sweep.registry_name={name}",
            "--set", "sweep.selection_metric=tta/lesion_dice_mean",
            "--set", "training.val_lesionwise=panoptica", *TRAIN)  # fmt: skip
    version = registry.get_version(name, alias="champion")
    assert {f"tta/lesion_dice_{r}" for r in POST_REGIONS} <= set(version.tags), version.tags
    assert "TTA Dice ET / NETC / SNFH / RC / TC / WT" in version.description
    return f"models:/{name}@champion"


def _predict_post_treatment(model: str, raw: Path, tmp_path: Path) -> Path:
    """predict: labels in the source geometry, painted WT → 2, TC → 1, ET → 3, RC → 4, then the
    profile's thresholds (cavity components below 30 voxels made background)."""
    from scipy import ndimage

    pp = tmp_path / "rc_30.json"
    pp.write_text(json.dumps({"profile": "gli-post", "min_size": {"rc": 30}}))
    pred = tmp_path / "pred"
    _invoke("predict", "--model", model, "--input", raw, "--output", pred, "--tta", "none",
            "--workers", "1", "--save-probabilities", "--postprocess", pp)  # fmt: skip
    segs = sorted(raw.rglob("*-seg.nii.gz"))
    assert len(segs) == 5
    for seg in segs:
        case = seg.name.removesuffix("-seg.nii.gz")
        out = np.asarray(nib.load(pred / f"{case}.nii.gz").dataobj)
        assert out.shape == nib.load(seg).shape
        probs = np.asarray(nib.load(pred / f"{case}_prob.nii.gz").dataobj)
        assert probs.shape[-1] == 4  # WT, TC, ET, RC
        expected = _painted(probs, [2, 1, 3, 4])
        cc, _ = ndimage.label(expected == 4, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(cc.ravel())
        expected[(cc > 0) & (sizes[cc] < 30)] = 0  # small cavity components removed
        np.testing.assert_array_equal(out, expected)
    return pred


def _score_and_export_post_treatment(pred: Path, raw: Path, tmp_path: Path) -> None:
    """The reference folder holds RC: scored on all six regions, in both lesion-wise
    families; exported per region of the profile."""
    csv_path = tmp_path / "scores" / "metrics.csv"
    _invoke("evaluate", "--pred", pred, "--ref", raw, "--profile", "gli-post", "-o", csv_path)
    summary = json.loads(csv_path.with_name("metrics.summary.json").read_text())
    assert set(summary["regions"]) == set(POST_REGIONS)
    pan = tmp_path / "panoptica" / "metrics.csv"
    _invoke("evaluate", "--pred", pred, "--ref", raw, "--profile", "gli-post",
            "--metric", "panoptica", "-o", pan)  # fmt: skip
    pan_summary = json.loads(pan.with_name("metrics.summary.json").read_text())
    assert set(pan_summary["regions"]) == set(POST_REGIONS)
    rle = tmp_path / "sub.csv"
    _invoke("export", "rle", pred, rle, "--profile", "gli-post")
    with open(rle, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 6
    assert {row["region"] for row in rows} == set(POST_REGIONS)


# nnU-Net's BraTS conversion: 1 = ED, 2 = NCR, 3 = ET (BraTS 2023 NCR 1, ED 2, ET 3 → these)
TO_NNUNET = np.array([0, 2, 1, 3], dtype=np.uint8)
ORDER = ("t1n", "t1c", "t2w", "t2f")
TRAIN_IDS = [f"BRATS_{i:03d}" for i in range(4)]


def _nnunet_dataset(root: Path) -> Path:
    """``nnUNet_raw/Dataset137_BraTS``: 4 training cases, 1 test case, nnU-Net's BraTS
    dataset.json (regions and regions_class_order)."""
    from bratslab.data.synth import synthesize_case

    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for i, cid in enumerate([*TRAIN_IDS, "BRATS_900"]):
        images, seg, affine = synthesize_case((i, 0), (48, 48, 40), et_label=3)
        split = "imagesTs" if cid == "BRATS_900" else "imagesTr"
        for ch, modality in enumerate(ORDER):
            img = nib.Nifti1Image(images[modality], affine)
            nib.save(img, root / split / f"{cid}_{ch:04d}.nii.gz")
        if split == "imagesTr":
            nib.save(nib.Nifti1Image(TO_NNUNET[seg], affine), root / "labelsTr" / f"{cid}.nii.gz")
    meta = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": 3,
        },  # fmt: skip
        "regions_class_order": [1, 2, 3],
        "numTraining": len(TRAIN_IDS),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_dataset_trains_on_its_splits_and_predicts_images_ts_in_its_values(
    ray_cluster, bratslab_home, tmp_path
):
    from bratslab.data.store import Store

    raw = _nnunet_dataset(tmp_path / "nnUNet_raw" / "Dataset137_BraTS")
    splits = [{"train": TRAIN_IDS[1:], "val": TRAIN_IDS[:1]},
              {"train": TRAIN_IDS[:3], "val": TRAIN_IDS[3:]}]  # fmt: skip
    splits_file = tmp_path / "nnUNet_preprocessed" / "Dataset137_BraTS" / "splits_final.json"
    splits_file.parent.mkdir(parents=True)
    splits_file.write_text(json.dumps(splits))
    store = tmp_path / "store"
    _invoke("data", "preprocess", raw, store, "--splits", splits_file, *SMALL)
    st = Store(store)
    for k, fold in enumerate(splits):
        assert sorted(st.case_ids(fold=k, split="val")) == fold["val"]
        assert sorted(st.case_ids(fold=k, split="train")) == sorted(fold["train"])

    name = "nnunet-it"
    _invoke("train", JOB, "--name", name, "--set", f"data.store={store}", *TRAIN)
    ckpt = _trained_checkpoint(bratslab_home, name)

    # nnU-Net's `predict -i imagesTs`: the folder alone, outputs named CASE.nii.gz
    pred = tmp_path / "pred"
    _invoke("predict", "--model", ckpt, "--input", raw / "imagesTs", "--output", pred,
            "--tta", "none", "--workers", "1", "--save-probabilities")  # fmt: skip
    assert sorted(p.name for p in pred.glob("*.nii.gz") if "_prob" not in p.name) == [
        "BRATS_900.nii.gz"
    ]
    out = np.asarray(nib.load(pred / "BRATS_900.nii.gz").dataobj)
    assert out.shape == (48, 48, 40)
    probs = np.asarray(nib.load(pred / "BRATS_900_prob.nii.gz").dataobj)
    # in the dataset's values: WT∖TC is ED = 1, TC∖ET is NCR = 2, ET = 3
    np.testing.assert_array_equal(out, _painted(probs, [1, 2, 3]))
