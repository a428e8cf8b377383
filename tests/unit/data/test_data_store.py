"""Store, fingerprint, folds, quarantine and resume (in-process runner) and the data CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.data.fingerprint import make_folds, suggest_patch_size
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.store import Store

CFG = PreprocessConfig(min_size=32, num_folds=3)


def _dataset(cases, n=4, bad=None):
    for i in range(n):
        cases.write(f"BraTS-SSA-{i:05d}-000", seed=i, with_seg=i != n - 1)
    if bad is not None:
        folder = cases.root / f"BraTS-SSA-{bad:05d}-000"
        (folder / f"{folder.name}-t2w.nii.gz").write_bytes(b"")
    return cases.root


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_make_folds_is_a_deterministic_partition():
    ids = [f"c{i}" for i in range(11)]
    folds = make_folds(ids, 5, seed=0)
    assert len(folds) == 5
    vals = [i for f in folds for i in f["val"]]
    assert sorted(vals) == sorted(ids)  # every case validated exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(ids)
        assert 2 <= len(f["val"]) <= 3
    assert make_folds(list(reversed(ids)), 5, seed=0) == folds  # order-independent
    assert make_folds(ids, 5, seed=1) != folds
    assert len(make_folds(ids[:3], 5)) == 3
    assert make_folds(["a"], 5) == [{"train": ["a"], "val": ["a"]}]


@pytest.mark.parametrize(
    ("median", "min_stored", "expected"),
    [
        ((140, 170, 140), (128, 128, 128), [128, 128, 128]),  # BraTS-like
        ((100, 90, 60), (128, 128, 128), [96, 80, 48]),
        ((40, 44, 33), (40, 44, 33), [32, 32, 32]),
        ((300, 300, 300), (300, 300, 300), [128, 128, 128]),  # capped by the voxel budget
    ],
)
def test_suggest_patch_size(median, min_stored, expected):
    patch = suggest_patch_size(median, min_stored, 16, 128**3)
    assert patch == expected
    assert all(p % 16 == 0 for p in patch) and np.prod(patch) <= 128**3


def test_run_builds_store_and_store_api(cases, tmp_path):
    raw = _dataset(cases)
    out = tmp_path / "store"
    rep = run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    assert rep.exit_code == 0 and len(rep.processed) == 4 and rep.failures == []
    s = Store(out)
    m = s.manifest
    assert m["format"] == "bratslab-store/1"
    assert m["channels"] == ["t1n", "t1c", "t2w", "t2f", "mask"]
    assert len(s) == 4 and s.case_ids() == sorted(s.case_ids())
    assert s.labeled_ids() == s.case_ids()[:3]
    assert s.num_folds == 3 and len(m["folds"]) == 3
    for f in range(3):
        assert sorted(s.case_ids(f, "train") + s.case_ids(f, "val")) == s.labeled_ids()
    with pytest.raises(ValueError, match="needs a fold"):
        s.case_ids(split="train")
    with pytest.raises(ValueError, match="out of range"):
        s.case_ids(3, "val")
    cid = s.case_ids()[0]
    x, y = s.load_x(cid), s.load_y(cid)
    assert isinstance(x, np.memmap) and x.dtype == np.float16 and x.shape[0] == 5
    assert y.shape == (1, *x.shape[1:]) and y.dtype == np.uint8
    assert s.case(cid)["shape"] == list(x.shape[1:])
    lv = s.case(cid)["label_voxels"]
    assert {k: int((np.asarray(y) == int(k)).sum()) for k in lv} == lv
    with pytest.raises(KeyError, match="no segmentation"):
        s.load_y(s.case_ids()[-1])
    meta = s.meta(cid)
    assert meta.id == cid and meta.shape == list(x.shape[1:])
    assert s.preprocessing == CFG
    # Median crop of these ~24-voxel brains rounds down to 16 per side.
    assert s.patch_size == (16, 16, 16)
    fp = s.fingerprint
    assert fp["num_cases"] == 4 and len(fp["median_cropped_shape"]) == 3
    assert set(fp["intensity"]) == {"t1n", "t1c", "t2w", "t2f"}
    assert fp["spacing"] == [1.0, 1.0, 1.0]
    assert len(s.fingerprint_hash) == 64
    assert json.loads((out / "failures.json").read_text()) == []


def test_bad_case_is_quarantined_others_go_on_and_rerun_touches_nothing(cases, tmp_path):
    raw = _dataset(cases, bad=1)
    out = tmp_path / "store"
    rep = run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    assert rep.exit_code == 1 and rep.quarantined == ["BraTS-SSA-00001-000"]
    assert len(rep.processed) == 3
    failures = json.loads((out / "failures.json").read_text())
    assert failures == [
        {
            "case": "BraTS-SSA-00001-000",
            "file": str(raw / "BraTS-SSA-00001-000" / "BraTS-SSA-00001-000-t2w.nii.gz"),
            "reason": "empty file",
        }
    ]
    s = Store(out)
    assert "BraTS-SSA-00001-000" not in s.case_ids()
    assert s.manifest["quarantined"] == ["BraTS-SSA-00001-000"]
    assert not list(out.glob("BraTS-SSA-00001-000_*"))

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rep2 = run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    assert rep2.processed == [] and len(rep2.skipped) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_changed_input_is_redone_and_broken_output_repaired(cases, tmp_path):
    raw = _dataset(cases, n=3)
    out = tmp_path / "store"
    run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    reference = _snapshot(out)
    # An interrupted writer's temp file, a truncated array and a missing meta file.
    (out / ".BraTS-SSA-00000-000_x.npy.abc.tmp").write_bytes(b"partial")
    xp = out / "BraTS-SSA-00001-000_x.npy"
    xp.write_bytes(xp.read_bytes()[:1000])
    (out / "BraTS-SSA-00002-000_meta.json").unlink()
    rep = run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    assert rep.processed == ["BraTS-SSA-00001-000", "BraTS-SSA-00002-000"]
    assert rep.skipped == ["BraTS-SSA-00000-000"]
    assert _snapshot(out) == reference  # byte-identical, temp file swept

    # A changed raw input is reprocessed.
    cases.write("BraTS-SSA-00000-000", seed=9)
    rep = run_preprocess(raw, out, CFG, use_ray=False, progress=False)
    assert rep.processed == ["BraTS-SSA-00000-000"]


def test_anisotropic_spacing_is_recorded(cases, tmp_path):
    cases.write("BraTS-PED-00001-000", spacing=(1.0, 1.0, 3.0))
    cases.write("BraTS-PED-00002-000", seed=1, spacing=(1.0, 1.0, 3.0))
    out = tmp_path / "store"
    run_preprocess(cases.root, out, CFG, use_ray=False, progress=False)
    fp = Store(out).fingerprint
    assert fp["spacing"] == [1.0, 1.0, 3.0] and fp["anisotropic"] is True


def test_cli_synth_spacing(tmp_path):
    import nibabel as nib

    raw = tmp_path / "raw"
    r = CliRunner().invoke(
        app, ["data", "synth", str(raw), "-n", "1", "--shape", "40", "40", "16", "--spacing",
              "1", "1", "3"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    img = nib.load(next(raw.rglob("*-t1n.nii.gz")))
    assert img.header.get_zooms() == (1.0, 1.0, 3.0)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_synth_validate_preprocess_fingerprint(tmp_path):
    runner = CliRunner()
    raw, out = tmp_path / "raw", tmp_path / "store"
    r = runner.invoke(
        app,
        ["data", "synth", str(raw), "--cases", "3", "--layout", "brats2021", "--seed", "1",
         "--shape", "40", "40", "32"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in raw.iterdir())[0] == "BraTS2021_01000"  # --seed 1: ids from 1000
    r = runner.invoke(app, ["data", "validate", str(raw)])
    assert r.exit_code == 0 and "3/3 cases OK" in r.output

    (raw / "BraTS2021_01002" / "BraTS2021_01002_flair.nii.gz").write_bytes(b"")
    fj = tmp_path / "f.json"
    r = runner.invoke(app, ["data", "validate", str(raw), "--failures", str(fj)])
    assert r.exit_code == 1 and "2/3 cases OK" in r.output
    assert json.loads(fj.read_text())[0]["reason"] == "empty file"

    r = runner.invoke(
        app, ["data", "preprocess", str(raw), str(out), "--no-ray", "--min-size", "32",
              "--dtype", "float32", "--folds", "2"],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "2 cases" in r.output and "1 quarantined" in r.output
    s = Store(out)
    assert s.case_ids() == ["BraTS2021_01000", "BraTS2021_01001"]
    assert s.load_x("BraTS2021_01000").dtype == np.float32
    assert s.manifest["cases"][0]["et_label"] == 4

    r = runner.invoke(app, ["data", "fingerprint", str(out)])
    assert r.exit_code == 0
    assert "median cropped shape" in r.output and "t2f" in r.output
    r = runner.invoke(app, ["data", "fingerprint", str(out), "--json"])
    assert json.loads(r.output)["patch_size"] == list(s.patch_size)


def test_cli_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["data", "preprocess", str(tmp_path / "none"), str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such folder" in r.output
    (tmp_path / "raw").mkdir()
    bad_cfg = tmp_path / "pre.yaml"
    bad_cfg.write_text("min_size: 64\nzscor: false\n")
    r = runner.invoke(
        app, ["data", "preprocess", str(tmp_path / "raw"), str(tmp_path / "o"), "--config",
              str(bad_cfg)],
    )  # fmt: skip
    assert r.exit_code == 2 and "zscor: unknown key" in r.output
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "none")])
    assert r.exit_code == 2 and "no such folder" in r.output
    r = runner.invoke(app, ["data", "fingerprint", str(tmp_path)])
    assert r.exit_code == 2 and "not a bratslab store" in r.output
    r = runner.invoke(
        app, ["data", "synth", str(tmp_path / "r"), "--cases", "1", "--unlabeled", "2"]
    )
    assert r.exit_code == 2
    r = runner.invoke(app, ["data", "synth", str(tmp_path / "r"), "--spacing", "1", "0", "1"])
    assert r.exit_code == 2 and "spacing must be positive" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(
        app, ["data", "preprocess", str(tmp_path / "empty"), str(tmp_path / "o"), "--no-ray"]
    )
    assert r.exit_code == 2 and "no BraTS case found" in r.output


def test_cli_config_file_and_flags(tmp_path, cases):
    cases.write("BraTS-MEN-00001-000")
    cfg = tmp_path / "pre.yaml"
    cfg.write_text("min_size: [48, 48, 40]\npercentile_rescale: true\nzscore: false\n")
    out = tmp_path / "store"
    r = CliRunner().invoke(
        app, ["data", "preprocess", str(cases.root), str(out), "--no-ray", "--config", str(cfg),
              "--dtype", "float32"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    p = Store(out).preprocessing
    assert p.min_size == [48, 48, 40] and p.percentile_rescale and not p.zscore
    assert p.dtype == "float32"
    x = Store(out).load_x("BraTS-MEN-00001-000")
    assert x.shape[1:] == (48, 48, 40) and float(x[:4].max()) == pytest.approx(255.0)
