"""A full disk stops `data preprocess` with "disk full" and records nothing: no case is
quarantined for it and dataset.json / failures.json keep what they held.

The store is a real 1 MiB tmpfs (mounting needs root; elsewhere the test is skipped)."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner


@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_fails_the_command_and_leaves_the_store_as_it_was(tmp_path, tiny_fs):
    from bratslab.app.main import app
    from bratslab.data.synth import synthesize_dataset

    synthesize_dataset(tmp_path / "raw", 2, shape=(64, 64, 64), seed=0)
    store = tiny_fs / "store"
    store.mkdir()
    before = {"dataset.json": '{"cases": []}\n', "failures.json": "[]\n"}
    for name, text in before.items():
        (store / name).write_text(text)
    r = CliRunner().invoke(
        app,
        ["data", "preprocess", str(tmp_path / "raw"), str(store), "--no-ray", "--min-size", "0"],
    )
    assert r.exit_code == 1, r.output
    assert "disk full while writing case BraTS-" in r.stderr and "Traceback" not in r.output
    assert "quarantined" not in r.output
    # Nothing recorded; the case being written was removed (one finished before it may stay,
    # unlisted, for the rerun to skip).
    assert {n: (store / n).read_text() for n in before} == before
    files = {p.name for p in store.iterdir()} - set(before)
    stuck = r.stderr.split("disk full while writing case ")[1].split(" ")[0]
    assert not {f for f in files if f.startswith(stuck)} and not list(store.glob(".*"))
