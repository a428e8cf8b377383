"""`bratslab evaluate` / `export rle` from the command line: damaged predictions, empty folders,
outputs that are directories, and a results table that fits 80 columns."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from bratslab.app.main import app

SHAPE = (24, 24, 16)
GOOD, BAD = "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"
TABLE_CHARS = set("┏┃┡│└━─┗╇┓┩┘┌┐")


def _write(path, data, zooms=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)


def _seg(shift=0):
    seg = np.zeros(SHAPE, np.uint8)
    seg[4 + shift : 14 + shift, 4:14, 3:11] = 2
    seg[6 + shift : 12 + shift, 6:12, 5:9] = 1
    seg[8 + shift : 10 + shift, 8:10, 6:8] = 3
    return seg


def _raw_case(root, case, seg):
    img = np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1
    for m in ("t1n", "t1c", "t2w", "t2f"):
        _write(root / case / f"{case}-{m}.nii.gz", img)
    _write(root / case / f"{case}-seg.nii.gz", seg)


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:  # not gzip, not NIfTI
        path.write_bytes(b"this is not a NIfTI file at all" * 10)


@pytest.fixture
def runner(bratslab_home):
    return CliRunner()


@pytest.fixture
def folders(tmp_path):
    raw, pred = tmp_path / "raw", tmp_path / "pred"
    _raw_case(raw, GOOD, _seg())
    _raw_case(raw, BAD, _seg())
    _write(pred / f"{GOOD}.nii.gz", _seg(shift=1))
    _write(pred / f"{BAD}.nii.gz", _seg())
    return raw, pred


@pytest.mark.parametrize(("how", "workers"), [("truncated", 1), ("garbage", 1), ("garbage", 2)])
def test_evaluate_scores_the_rest_when_a_prediction_is_unreadable(
    runner, folders, tmp_path, how, workers
):
    raw, pred = folders
    _damage(pred / f"{BAD}.nii.gz", how)
    out = tmp_path / "m" / "metrics.csv"
    args = ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(out)]
    res = runner.invoke(app, [*args, "--workers", str(workers)])
    assert res.exit_code == 1, res.output
    # The bad case is named with its file and the problem, on stderr.
    assert f"FAILED {BAD}: {pred / f'{BAD}.nii.gz'}: cannot read the label map" in res.stderr
    assert GOOD not in res.stderr
    assert f"not scored (unreadable or invalid files): {BAD}" in res.stdout
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["region"]) for r in rows] == [(GOOD, r) for r in ("wt", "tc", "et")]
    assert 0.5 < float(rows[0]["dice"]) < 1.0  # shifted by one voxel: scored, not perfect
    summary = json.loads(out.with_name("metrics.summary.json").read_text())
    assert summary["cases"] == 1 and summary["missing_predictions"] == []
    assert [f["case"] for f in summary["failed"]] == [BAD]
    assert summary["failed"][0]["file"].endswith(f"{BAD}.nii.gz")


def test_evaluate_names_a_prediction_in_the_wrong_geometry(runner, folders, tmp_path):
    raw, pred = folders
    _write(pred / f"{BAD}.nii.gz", np.zeros((8, 8, 8), np.uint8))
    out = tmp_path / "metrics.csv"
    res = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(out)]
    )
    assert res.exit_code == 1, res.output
    assert f"FAILED {BAD}: {pred / f'{BAD}.nii.gz'}: shape (8, 8, 8) differs" in res.stderr
    assert len(out.read_text().splitlines()) == 1 + 3


def test_evaluate_output_that_is_a_directory_is_a_usage_error(runner, folders, tmp_path):
    raw, pred = folders
    res = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(tmp_path)]
    )
    assert res.exit_code == 2, res.output
    assert f"{tmp_path}: is a directory" in res.stderr
    assert "Traceback" not in res.output


def test_evaluate_table_fits_80_columns(runner, folders, tmp_path):
    raw, pred = folders
    out = tmp_path / "metrics.csv"
    res = runner.invoke(
        app,
        ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(out)],
        env={"COLUMNS": "80"},
    )
    assert res.exit_code == 0, res.output
    table = [line for line in res.stdout.splitlines() if TABLE_CHARS & set(line)]
    assert len(table) >= 8  # borders, header and the six metric rows
    assert max(len(line) for line in table) <= 80, "\n".join(table)
    assert "…" not in res.stdout  # nothing truncated to fit
    summary = json.loads(out.with_name("metrics.summary.json").read_text())
    # Every cell is shown whole, on one line: header, each metric's mean / median per region.
    assert re.search(r"metric\s+┃\s+WT\s+┃\s+TC\s+┃\s+ET", res.stdout)
    for key, label, digits in (("dice", "Dice", 3), ("hd95", "HD95 mm", 1)):
        cells = [
            f"{summary['regions'][r][key]['mean']:.{digits}f} / "
            f"{summary['regions'][r][key]['median']:.{digits}f}"
            for r in ("wt", "tc", "et")
        ]
        row = r"\s+│\s+".join([label, *map(re.escape, cells)])
        assert re.search(row, res.stdout), row
    assert "lesion HD95 mm" in res.stdout and "lesions TP/FP/FN" in res.stdout


def test_export_of_a_folder_without_predictions_exits_1(runner, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    # A probability map is not a prediction to export.
    _write(pred / "x_prob.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    out = tmp_path / "sub.csv"
    res = runner.invoke(app, ["export", "rle", str(pred), str(out)])
    assert res.exit_code == 1, res.output
    assert f"{pred}: no predictions to export" in res.stderr
    assert not out.exists()


def test_export_to_a_directory_exits_2(runner, folders, tmp_path):
    _, pred = folders
    target = tmp_path / "existing"
    target.mkdir()
    res = runner.invoke(app, ["export", "rle", str(pred), str(target)])
    assert res.exit_code == 2, res.output
    assert f"{target}: is a directory" in res.stderr
    assert "Traceback" not in res.output and list(target.iterdir()) == []


def test_export_refuses_an_existing_file_unless_overwrite(runner, folders, tmp_path):
    _, pred = folders
    out = tmp_path / "submission.csv"
    out.write_text("an earlier submission\n")
    res = runner.invoke(app, ["export", "rle", str(pred), str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"{out}: exists; pass --overwrite to replace it"
    assert out.read_text() == "an earlier submission\n"  # untouched
    res = runner.invoke(app, ["export", "rle", str(pred), str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("id,case,region,shape,rle\n")


def test_predict_into_an_existing_file_is_one_line_exit_2(runner, folders, tmp_path):
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    raw, _ = folders
    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    model = save_model_dir(tmp_path / "model", build_model(cfg), cfg, {"patch_size": [16] * 3})
    taken = tmp_path / "taken.nii.gz"
    taken.write_bytes(b"someone's file")
    for output, named in ((taken, taken), (taken / "pred", taken)):
        args = ["predict", "--model", str(model), "--input", str(raw), "--output", str(output)]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
        assert f"{named}" in res.stderr and "exists and is not a folder" in res.stderr
    assert taken.read_bytes() == b"someone's file"


def test_predict_checks_its_input_before_the_model(runner, tmp_path):
    """A wrong --input is named before any model is fetched (here one that does not exist)."""
    args = ["predict", "--model", "models:/no-such-model@champion", "--input"]
    res = runner.invoke(app, [*args, str(tmp_path / "nope"), "--output", str(tmp_path / "p")])
    assert res.exit_code == 2, res.output
    assert f"{tmp_path / 'nope'}: no such folder" in res.stderr
    assert "no-such-model" not in res.stderr


def test_export_skips_and_names_a_damaged_prediction(runner, folders, tmp_path):
    _, pred = folders
    _damage(pred / f"{BAD}.nii.gz", "truncated")
    out = tmp_path / "sub.csv"
    res = runner.invoke(app, ["export", "rle", str(pred), str(out)])
    assert res.exit_code == 1, res.output
    assert f"FAILED {BAD}: {pred / f'{BAD}.nii.gz'}: cannot read" in res.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"{GOOD}_wt", f"{GOOD}_tc", f"{GOOD}_et"]


def _huge_header_file(path):
    """A gzip NIfTI of a few dozen bytes whose header claims 1024 x 1024 x 512 uint8 voxels
    (512 MiB) and holds none of them."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((1024, 1024, 512))
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))


def test_a_header_claiming_a_huge_volume_is_one_failed_case_in_bounded_memory(
    runner, folders, tmp_path
):
    import tracemalloc

    from bratslab.evaluate.label_maps import CaseError, read_label_map

    raw, pred = folders
    bad = pred / f"{BAD}.nii.gz"
    _huge_header_file(bad)
    assert bad.stat().st_size < 200
    tracemalloc.start()
    try:
        with pytest.raises(CaseError) as err:
            read_label_map(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MiB reading a {bad.stat().st_size} B file"
    assert err.value.file == str(bad) and "cannot read the label map" in err.value.reason

    out = tmp_path / "metrics.csv"
    res = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--ref", str(raw), "--output", str(out)]
    )
    assert res.exit_code == 1, res.output
    assert f"FAILED {BAD}: {bad}: cannot read the label map" in res.stderr
    with open(out) as f:
        assert {r["case"] for r in csv.DictReader(f)} == {GOOD}  # the other case is scored


@pytest.mark.timeout(180)  # unbounded restarts (Ray Data's default) would never end
def test_a_case_that_kills_its_actor_is_dropped_after_bounded_retries(ray_cluster, tmp_path):
    """Ray Data restarts a dead actor and retries its row forever by default: one case that
    always kills its worker (an OOM kill) would never let `bratslab predict` end. Bounded now:
    the case is tried 1 + ACTOR_RETRIES times, then dropped; the other cases go on."""
    import os

    from bratslab.inference.predict import (
        ACTOR_RETRIES,
        actor_retry_args,
        map_row_alone,
        map_rows_recovering_lost,
        map_rows_with_actors,
    )

    assert actor_retry_args() == {"max_restarts": 1, "max_task_retries": 1}
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    class Crasher:  # defined here so Ray ships it by value
        def __init__(self, folder):
            self.folder = folder

        def __call__(self, row):
            if row["case"] == "boom":
                with open(os.path.join(self.folder, f"try-{os.getpid()}"), "w"):
                    pass
                os._exit(1)  # as the OOM killer would
            return {"case": row["case"], "status": "written"}

    rows = [{"case": c} for c in ("a", "b", "c", "boom")]
    out = {r["case"] for r in map_rows_with_actors(rows, Crasher, {"folder": str(attempts)}, 2, 1)}
    # The run ends; other cases come back (one queued on the dying actor may be lost with it,
    # and predict_folder reports every case without a result as failed).
    assert out and out <= {"a", "b", "c"}, out
    assert len(list(attempts.iterdir())) == 1 + ACTOR_RETRIES  # tried, retried once, dropped

    # What predict runs: the same pool, then every lost row once more, alone. Every innocent
    # case comes back, whichever actor it was queued on; only "boom" is lost.
    ids = [r["case"] for r in rows]
    got = [
        r["case"]
        for r in map_rows_recovering_lost(rows, ids, Crasher, {"folder": str(attempts)}, 2, 1)
    ]
    assert sorted(got) == ["a", "b", "c"], got

    # A row run alone: an innocent one comes back, the killer's actor is not restarted (None).
    for f in attempts.iterdir():
        f.unlink()
    ctor = {"folder": str(attempts)}
    assert map_row_alone({"case": "a"}, Crasher, ctor, 1, 0) == {"case": "a", "status": "written"}
    assert map_row_alone({"case": "boom"}, Crasher, ctor, 1, 0) is None
    assert len(list(attempts.iterdir())) == 1  # tried once: no restart, no retry


def test_evaluate_against_the_wrong_reference_folder_exits_1_in_one_line(runner, folders, tmp_path):
    """Most references without a prediction (the training folder given as --ref, say) is an
    error, not a table of empty scores."""
    raw, pred = folders
    (pred / f"{BAD}.nii.gz").unlink()
    other = "BraTS-GLI-00003-000"
    _raw_case(raw, other, _seg())
    out = tmp_path / "m.csv"
    r = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(raw), "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines() == [
        f"{pred}: no prediction for 2 of the 3 reference cases in {raw} ({BAD}, {other}); "
        "are these the predictions of that folder?"
    ]
    assert not out.exists()
