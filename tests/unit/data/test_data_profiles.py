"""Challenge profiles: the table, label-convention detection, and post-treatment (RC) cases
through validate and preprocess into a store that records its profile (real .nii.gz files)."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.data.discovery import discover_cases
from bratslab.data.labels import labels_to_regions
from bratslab.data.preprocess import PreprocessConfig, preprocess_case
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.profiles import PROFILES, get_profile, profile_names
from bratslab.data.store import Store
from bratslab.data.validate import load_case

GLI = "BraTS-GLI-00007-100"


def _add_cavity(path, *, drop_et: bool = False) -> np.ndarray:
    """Paint a resection cavity (label 4) beside the tumour of a written seg; returns the seg."""
    img = nib.load(path)
    seg = np.asarray(img.dataobj).copy()
    seg[2:7, 2:7, 2:6] = 4
    if drop_et:
        seg[seg == 3] = 1
    nib.save(nib.Nifti1Image(seg, img.affine), path)
    return seg


def test_table_holds_the_shipped_profiles():
    for name in ("brats2021", "brats2023-gli", "brats2023-ssa", "brats2023-ped", "brats2023-men",
                 "brats2023-met", "brats2024-gli"):  # fmt: skip
        assert name in PROFILES
    post = get_profile("gli-post")
    assert post.name == "brats2024-gli" and post.labels == {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}
    assert post.regions == {"et": (3,), "netc": (1,), "snfh": (2,), "rc": (4,), "tc": (1, 3),
                            "wt": (1, 2, 3)}  # fmt: skip
    assert post.rc_label == 4 and post.et_label == 3
    assert get_profile("brats2021").et_label == 4 and get_profile("brats2021").store_label(4) == 3
    assert get_profile("brats2023-met").lesionwise.min_size_mm3 == 2.0
    assert get_profile("brats2023-men").lesionwise.dilation == 1
    assert "gli" in profile_names() and "mets" in profile_names()
    with pytest.raises(ValueError, match="unknown profile 'nope'.*brats2024-gli"):
        get_profile("nope")


def test_official_gli_name_with_rc_is_post_treatment(cases):
    folder = cases.write(GLI)
    seg = _add_cavity(cases.path(folder, "seg"))
    (case,) = discover_cases(cases.root)
    loaded, failures = load_case(case)
    assert failures == []
    assert loaded.case.profile == "brats2024-gli" and loaded.case.et_label == 3
    assert loaded.label_counts[4] == int((seg == 4).sum()) > 0
    pre = preprocess_case(case, PreprocessConfig(min_size=(0, 0, 0)))
    assert pre.meta.profile == "brats2024-gli"
    assert set(np.unique(pre.y).tolist()) == {0, 1, 2, 3, 4}  # the store keeps RC = 4
    assert pre.meta.label_voxels["4"] == int((seg == 4).sum())
    wt, tc, et = labels_to_regions(pre.y)
    assert not wt[pre.y[0] == 4].any()  # RC lies outside WT


def test_explicit_2023_profile_quarantines_rc(cases):
    folder = cases.write(GLI)
    _add_cavity(cases.path(folder, "seg"))
    (case,) = discover_cases(cases.root)
    loaded, (f,) = load_case(dataclasses.replace(case, profile="brats2023-gli"))
    assert loaded is None
    assert "labels [4] outside the brats2023-gli convention [0, 1, 2, 3]" in f.reason


def test_label_4_without_names_is_ambiguous_until_a_profile_says(tmp_path):
    from bratslab.data.synth import synthesize_case

    images, seg, affine = synthesize_case((0, 0), (40, 44, 32), et_label=4)
    folder = tmp_path / "patient7"
    folder.mkdir()
    for m, img in images.items():
        nib.save(nib.Nifti1Image(img, affine), folder / f"patient7_{m}.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), folder / "patient7_seg.nii.gz")
    (case,) = discover_cases(tmp_path)
    loaded, (f,) = load_case(case)
    assert loaded is None and f.file.endswith("patient7_seg.nii.gz")
    assert "label 4 is ambiguous" in f.reason
    assert "--profile brats2021" in f.reason and "--profile brats2024-gli" in f.reason
    as_2021, failures = load_case(dataclasses.replace(case, profile="brats2021"))
    assert failures == [] and as_2021.case.et_label == 4
    as_rc, failures = load_case(dataclasses.replace(case, profile="brats2024-gli"))
    assert failures == [] and as_rc.case.et_label == 3 and as_rc.case.profile == "brats2024-gli"


def test_other_cohorts_name_the_profile_for_label_4(cases):
    folder = cases.write("BraTS-PED-00003-000")
    _add_cavity(cases.path(folder, "seg"))
    (case,) = discover_cases(cases.root)
    _, (f,) = load_case(case)
    assert "give --profile brats2024-ped" in f.reason


def test_store_records_the_profile(cases, tmp_path):
    cases.write("BraTS-GLI-00001-000", seed=1)  # a 2023-style case: no RC
    folder = cases.write(GLI, seed=2)
    _add_cavity(cases.path(folder, "seg"))
    cfg = PreprocessConfig(min_size=(0, 0, 0), num_folds=2)
    report = run_preprocess(cases.root, tmp_path / "store", cfg, use_ray=False, progress=False)
    assert report.quarantined == []
    store = Store(tmp_path / "store")
    assert store.manifest["profile"] == "brats2024-gli" and store.profile.rc_label == 4
    assert store.case(GLI)["profile"] == "brats2024-gli"
    assert set(np.unique(store.load_y(GLI)).tolist()) == {0, 1, 2, 3, 4}
    shown = CliRunner().invoke(app, ["data", "fingerprint", str(tmp_path / "store")])
    assert shown.exit_code == 0 and "profile brats2024-gli" in shown.output
    # a store written before profiles existed reads as the 2023 profile
    manifest = json.loads((tmp_path / "store" / "dataset.json").read_text())
    del manifest["profile"]
    (tmp_path / "store" / "dataset.json").write_text(json.dumps(manifest))
    assert Store(tmp_path / "store").profile.name == "brats2023-gli"


def test_explicit_profile_reaches_the_store_and_redoes_cases(cases, tmp_path):
    cases.write("BraTS-GLI-00001-000", seed=1)
    cfg = PreprocessConfig(min_size=(0, 0, 0), num_folds=1)
    out = tmp_path / "store"
    run_preprocess(cases.root, out, cfg, use_ray=False, progress=False)
    assert Store(out).profile.name == "brats2023-gli"
    again = run_preprocess(cases.root, out, cfg, use_ray=False, progress=False, profile="gli-post")
    assert again.processed == ["BraTS-GLI-00001-000"]  # read in another profile: redone
    assert Store(out).profile.name == "brats2024-gli"
    with pytest.raises(ValueError, match="unknown profile"):
        run_preprocess(cases.root, out, cfg, use_ray=False, progress=False, profile="x")


def test_cli_lists_profiles_and_validate_takes_one(cases):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "profiles", "--json"])
    assert res.exit_code == 0, res.output
    names = [p["name"] for p in json.loads(res.output)]
    assert names == list(PROFILES)
    res = runner.invoke(app, ["data", "profiles"])
    assert res.exit_code == 0 and "brats2024-gli" in res.output
    folder = cases.write(GLI)
    _add_cavity(cases.path(folder, "seg"))
    res = runner.invoke(app, ["data", "validate", str(cases.root), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["data", "validate", str(cases.root), "--json", "--profile", "brats2023-gli"]
    )
    assert res.exit_code == 1 and "outside the brats2023-gli convention" in res.output
    res = runner.invoke(app, ["data", "validate", str(cases.root), "--profile", "nope"])
    assert res.exit_code == 2 and "unknown profile" in res.output


@pytest.mark.parametrize("name", list(PROFILES))
def test_regions_rebuild_the_label_map(name):
    from bratslab.data.labels import profile_regions, rebuild_profile_labels

    prof = get_profile(name)
    rng = np.random.default_rng(0)
    labels = rng.choice([0, *prof.labels], size=(6, 5, 4)).astype(np.uint8)
    regions = profile_regions(labels, prof)
    assert regions.shape == (len(prof.rebuild), 6, 5, 4)
    np.testing.assert_array_equal(rebuild_profile_labels(regions, prof), labels)
    with pytest.raises(ValueError, match="expected"):
        rebuild_profile_labels(regions[:1], prof)


def test_synth_post_treatment_cases_validate_and_preprocess(tmp_path):
    raw = tmp_path / "raw"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "synth",
            str(raw),
            "-n",
            "2",
            "--shape",
            "48",
            "48",
            "32",
            "--profile",
            "gli-post",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    seg_path = raw / "BraTS-GLI-00000-100" / "BraTS-GLI-00000-100-seg.nii.gz"
    seg = np.asarray(nib.load(seg_path).dataobj)
    assert set(np.unique(seg).tolist()) >= {0, 2, 4}
    t2w = np.asarray(nib.load(seg_path.with_name("BraTS-GLI-00000-100-t2w.nii.gz")).dataobj)
    t1n = np.asarray(nib.load(seg_path.with_name("BraTS-GLI-00000-100-t1n.nii.gz")).dataobj)
    brain = t1n > 0
    assert t2w[seg == 4].mean() > t2w[brain & (seg == 0)].mean()  # fluid: bright in T2
    assert t1n[seg == 4].mean() < t1n[brain & (seg == 0)].mean()  # and dark in T1
    res = runner.invoke(app, ["data", "validate", str(raw)])
    assert res.exit_code == 0, res.output
    cfg = PreprocessConfig(min_size=(0, 0, 0), num_folds=2)
    run_preprocess(raw, tmp_path / "store", cfg, use_ray=False, progress=False)
    assert Store(tmp_path / "store").profile.name == "brats2024-gli"
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--profile", "ped"])
    assert res.exit_code == 2 and "brats2024-gli" in res.output


def test_training_targets_leave_rc_out_of_wt():
    import torch

    from bratslab.train.losses import labels_to_region_targets

    y = torch.tensor([0, 1, 2, 3, 4], dtype=torch.uint8).reshape(1, 1, 5, 1, 1)
    wt, tc, et = labels_to_region_targets(y)[0, :, :, 0, 0]
    assert wt.tolist() == [0, 1, 1, 1, 0] and tc.tolist() == [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(labels_to_regions(y.numpy()[0])[0][:, 0, 0], wt.numpy() > 0)
