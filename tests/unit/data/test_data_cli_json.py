"""`bratslab data validate --json` on real synthetic .nii.gz cases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.data.synth import synthesize_dataset


@pytest.fixture(autouse=True)
def _settings(tmp_path, monkeypatch):
    """The CLI exports its settings (pin_settings); set here, they are undone afterwards."""
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def _validate(*args: str):
    return CliRunner().invoke(app, ["data", "validate", *args], env={"COLUMNS": "200"})


def test_json_report_of_a_good_and_a_broken_case(tmp_path):
    folders = synthesize_dataset(tmp_path / "raw", 3, shape=(24, 24, 16), seed=0)
    broken = folders[1]
    t1n = next(broken.glob("*-t1n.nii.gz"))
    t1n.write_bytes(t1n.read_bytes()[:200])  # truncated mid-stream

    r = _validate(str(tmp_path / "raw"), "--json", "--failures", str(tmp_path / "f.json"))
    assert r.exit_code == 1, r.output  # same exit status as without --json
    report = json.loads(r.stdout)  # stdout is the JSON and nothing else
    assert report["total"] == 3 and report["ok"] == 2
    assert report["quarantined"] == [broken.name]
    assert report["ok_cases"] == [folders[0].name, folders[2].name]
    assert [f["file"] for f in report["failures"]] == [str(t1n)]
    assert report["failures"][0]["case"] == broken.name and report["failures"][0]["reason"]
    assert json.loads((tmp_path / "f.json").read_text()) == report["failures"]
    assert "quarantined" not in r.stderr  # no rich table in JSON mode

    t1n.unlink()
    synthesize_dataset(tmp_path / "fresh", 3, shape=(24, 24, 16), seed=0)
    fresh = tmp_path / "fresh" / broken.name / t1n.name
    t1n.write_bytes(fresh.read_bytes())
    r = _validate(str(tmp_path / "raw"), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["ok"], report["quarantined"], report["failures"]) == (3, [], [])


def test_without_json_the_summary_and_table_are_unchanged(tmp_path):
    folders = synthesize_dataset(tmp_path / "raw", 2, shape=(24, 24, 16), seed=0)
    next(folders[0].glob("*-seg.nii.gz")).write_bytes(b"")
    r = _validate(str(tmp_path / "raw"))
    assert r.exit_code == 1
    assert "1/2 cases OK" in r.stdout.splitlines()
    assert "1 case(s) quarantined" in r.stderr and folders[0].name in r.stderr


def test_usage_errors_still_exit_2_in_json_mode(tmp_path):
    r = _validate(str(tmp_path / "missing"), "--json")
    assert r.exit_code == 2 and r.stdout == ""


def test_an_empty_case_folder_is_named_not_skipped(tmp_path):
    synthesize_dataset(tmp_path / "raw", 1, shape=(24, 24, 16), seed=0)
    empty = tmp_path / "raw" / "BraTS-GLI-00009-000"
    empty.mkdir()
    notes = tmp_path / "raw" / "BraTS-GLI-00010-000"
    notes.mkdir()
    (notes / "README.txt").write_text("images to follow")
    (tmp_path / "raw" / ".cache").mkdir()  # hidden: not a case folder
    r = _validate(str(tmp_path / "raw"), "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    assert report["total"] == 1 and report["ok"] == 1
    assert report["failures"] == [
        {"case": empty.name, "file": str(empty), "reason": "case folder is empty"},
        {"case": notes.name, "file": str(notes),
         "reason": "case folder holds no BraTS image (1 other file)"},
    ]  # fmt: skip
    r = _validate(str(tmp_path / "raw"))
    assert r.exit_code == 1 and "1/1 cases OK" in r.stdout and empty.name in r.stderr
