"""nnU-Net raw datasets in: dataset.json, imagesTr/_000X channels, labelsTr in nnU-Net's BraTS
values (1 = ED, 2 = NCR, 3 = ET), imagesTs, and splits_final.json folds (real .nii.gz files)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.data.discovery import discover_cases
from bratslab.data.layout import RawCase
from bratslab.data.preprocess import PreprocessConfig
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.store import Store
from bratslab.data.synth import synthesize_case
from bratslab.data.validate import load_case

CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
ORDER = ("t1n", "t1c", "t2w", "t2f")  # what those names mean
TO_NNUNET = np.array([0, 2, 1, 3], dtype=np.uint8)  # BraTS 2023 NCR 1, ED 2, ET 3 → nnU-Net
IDS = [f"BRATS_{i:03d}" for i in range(4)]


def _dataset_json(root, **changes) -> None:
    meta = {
        "channel_names": CHANNELS,
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": 3,
        },
        "regions_class_order": [1, 2, 3],
        "numTraining": len(IDS),
        "file_ending": ".nii.gz",
        **changes,
    }
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture
def nnunet_raw(tmp_path):
    """Dataset137_BraTS-like: 4 training cases, 1 test case. Returns (root, BraTS segs)."""
    root = tmp_path / "nnUNet_raw" / "Dataset137_BraTS"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    segs = {}
    for i, cid in enumerate([*IDS, "BRATS_900"]):
        images, seg, affine = synthesize_case((i, 0), (40, 44, 32), et_label=3)
        split = "imagesTs" if cid == "BRATS_900" else "imagesTr"
        for ch, modality in enumerate(ORDER):
            nib.save(
                nib.Nifti1Image(images[modality], affine), root / split / f"{cid}_{ch:04d}.nii.gz"
            )
        if split == "imagesTr":
            nib.save(nib.Nifti1Image(TO_NNUNET[seg], affine), root / "labelsTr" / f"{cid}.nii.gz")
            segs[cid] = seg
    _dataset_json(root)
    return root, segs


def test_cases_read_with_channels_and_labels_mapped(nnunet_raw):
    root, segs = nnunet_raw
    cases = discover_cases(root)
    assert [c.id for c in cases] == [*IDS, "BRATS_900"]
    first = cases[0]
    assert first.files["t1c"].name == "BRATS_000_0001.nii.gz"
    assert first.files["t2f"].name == "BRATS_000_0003.nii.gz"
    assert first.profile == "brats2023-gli" and first.relabel == {0: 0, 1: 2, 2: 1, 3: 3}
    assert cases[-1].seg is None  # imagesTs: inference only
    # what a Ray task receives (JSON-friendly) is the same case
    assert RawCase.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    loaded, failures = load_case(first)
    assert failures == []
    np.testing.assert_array_equal(loaded.seg, segs[first.id])  # back to NCR 1, ED 2, ET 3


def test_preprocess_makes_the_folds_of_splits_final(nnunet_raw, tmp_path):
    root, segs = nnunet_raw
    splits = [
        {"train": ["BRATS_000", "BRATS_003"], "val": ["BRATS_001", "BRATS_002"]},
        {"train": ["BRATS_001", "BRATS_002"], "val": ["BRATS_000", "BRATS_003"]},
    ]
    splits_path = tmp_path / "nnUNet_preprocessed" / "Dataset137_BraTS" / "splits_final.json"
    splits_path.parent.mkdir(parents=True)
    splits_path.write_text(json.dumps(splits))
    cfg = PreprocessConfig(min_size=(0, 0, 0), num_folds=5)
    out = tmp_path / "store"
    report = run_preprocess(root, out, cfg, use_ray=False, progress=False, splits=splits_path)
    assert report.quarantined == [] and len(report.processed) == 5
    store = Store(out)
    assert store.manifest["folds"] == splits and store.num_folds == 2
    for f, fold in enumerate(splits):
        assert store.case_ids(f, "train") == fold["train"]
        assert store.case_ids(f, "val") == fold["val"]
    assert store.profile.name == "brats2023-gli"
    assert not store.case("BRATS_900")["has_label"]
    y = store.load_y("BRATS_002")[0]
    for label in (1, 2, 3):  # store labels are BraTS's, not nnU-Net's
        assert int((y == label).sum()) == int((segs["BRATS_002"] == label).sum())
    # The seeded split of the same cases differs: the splits file decided.
    plain = run_preprocess(root, tmp_path / "plain", cfg, use_ray=False, progress=False)
    assert plain.manifest["folds"] != splits
    assert plain.manifest["fingerprint_hash"] != store.fingerprint_hash


def test_unknown_split_ids_and_channel_names_are_named(nnunet_raw, tmp_path):
    root, _ = nnunet_raw
    bad = tmp_path / "splits_final.json"
    bad.write_text(json.dumps([{"train": ["BRATS_000"], "val": ["NOPE_1"]}]))
    with pytest.raises(ValueError, match=r"NOPE_1.*no case of the dataset"):
        run_preprocess(root, tmp_path / "s", use_ray=False, progress=False, splits=bad)
    _dataset_json(root, channel_names={**CHANNELS, "3": "DWI"})
    with pytest.raises(ValueError, match=r"channel 3 'DWI' is not a BraTS modality"):
        discover_cases(root)
    res = CliRunner().invoke(app, ["data", "validate", str(root)])
    assert res.exit_code == 2 and "DWI" in res.output
    _dataset_json(root, labels={"background": 0, "liver": 1})
    with pytest.raises(ValueError, match=r"label 'liver' is not a BraTS label"):
        discover_cases(root)


def test_undeclared_label_values_are_quarantined(nnunet_raw):
    root, _ = nnunet_raw
    p = root / "labelsTr" / "BRATS_001.nii.gz"
    img = nib.load(p)
    seg = np.asarray(img.dataobj).copy()
    seg[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(seg, img.affine), p)
    res = CliRunner().invoke(app, ["data", "validate", str(root), "--json"])
    assert res.exit_code == 1
    (f,) = json.loads(res.output)["failures"]
    assert f["case"] == "BRATS_001" and "labels [5] are not declared in dataset.json" in f["reason"]


def test_sub_region_labels_and_rc_choose_the_post_treatment_profile(nnunet_raw):
    root, _ = nnunet_raw
    _dataset_json(
        root,
        labels={"background": 0, "NETC": 1, "SNFH": 2, "ET": 3, "RC": 4},
        regions_class_order=None,
    )
    (case, *_) = discover_cases(root)
    assert case.profile == "brats2024-gli" and case.relabel == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}


def test_evaluate_reads_labels_tr_in_the_dataset_values(nnunet_raw, tmp_path):
    from bratslab.evaluate.scoring import evaluate_folder

    root, segs = nnunet_raw
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    affine = nib.load(root / "labelsTr" / "BRATS_000.nii.gz").affine
    for cid, seg in segs.items():  # perfect predictions, in BraTS values (as predict writes)
        nib.save(nib.Nifti1Image(seg, affine), pred_dir / f"{cid}.nii.gz")
    result = evaluate_folder(pred_dir, root, progress=False)
    assert result.failures == [] and len(result.rows) == 3 * len(IDS)
    assert all(r["dice"] == 1.0 for r in result.rows)  # TC/ET would not match nnU-Net's raw 1/2
