"""Settings, config loading/overrides, atomic writes and label conventions."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import Field

from bratslab import atomic
from bratslab.config import ConfigError, StrictModel, apply_overrides, load_config
from bratslab.data.labels import (
    from_store_labels,
    labels_to_regions,
    regions_to_labels,
    to_store_labels,
)
from bratslab.settings import get_settings


class _Inner(StrictModel):
    lr: float = 1e-3
    sizes: list[int] = Field(default_factory=lambda: [64, 64, 64])


class _Outer(StrictModel):
    name: str
    inner: _Inner = Field(default_factory=_Inner)


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s = get_settings()
    assert s.home == tmp_path
    assert s.ray_address is None
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert get_settings().tracking_uri == "http://127.0.0.1:5000"


def test_overrides_and_unknown_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ninner:\n  lr: 0.1\n")
    cfg = load_config(_Outer, f, ["inner.lr=1e-4", "inner.sizes=[32,32,16]"])
    assert cfg.inner.lr == pytest.approx(1e-4)
    assert cfg.inner.sizes == [32, 32, 16]
    with pytest.raises(ConfigError, match=r"inner\.lrr: unknown key"):
        load_config(_Outer, f, ["inner.lrr=3"])
    with pytest.raises(ConfigError, match="name.*section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_atomic_npy_identical_to_np_save(tmp_path):
    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    atomic.save_npy(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_failure_leaves_old_file(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("et", [3, 4])
def test_label_round_trip(et):
    rng = np.random.default_rng(0)
    src = rng.choice(np.array([0, 1, 2, et]), size=(8, 8, 8)).astype(np.uint8)
    store = to_store_labels(src, et)
    assert set(np.unique(store)) <= {0, 1, 2, 3}
    regions = labels_to_regions(store[None])
    assert regions.shape == (3, 8, 8, 8)
    np.testing.assert_array_equal(regions[0], src > 0)
    np.testing.assert_array_equal(regions[2], src == et)
    np.testing.assert_array_equal(from_store_labels(regions_to_labels(regions), et), src)


def test_atomic_files_get_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o022)
    os.umask(old)
    atomic.write_text(tmp_path / "m.txt", "x")
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o666 & ~old


_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_PNG, "not a UTF-8 text file (byte 0x89 at offset 0)"),
        (bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8)), "not a UTF-8"),
        ("name: x\n".encode("utf-16"), "not a UTF-8 text file (byte 0xff at offset 0)"),
        ("name: x\n".encode("utf-16-le"), "binary file (contains NUL bytes)"),
        (b'["a", "b"]', "expected a mapping at the top level, not a list"),
        (b"just words", "expected a mapping at the top level, not a string"),
        (b"name: [1,\n  b: }\n", "not valid YAML: expected the node content, but found '}' at "),
        (b"when: 2020-13-45\n", "not valid YAML: month must be in 1..12"),
        (b"a: \x07\n", "not valid YAML: unacceptable character #x0007"),
    ],
    ids=[
        "png",
        "random",
        "utf16-bom",
        "utf16-no-bom",
        "json-list",
        "scalar",
        "syntax",
        "date",
        "control-char",
    ],  # fmt: skip
)
def test_non_yaml_file_is_one_line_error_naming_the_file(tmp_path, content, problem):
    from bratslab.config import load_yaml

    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and problem in message


def test_yaml_is_read_as_utf8_with_or_without_bom(tmp_path):
    import re

    from bratslab.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_bytes("\ufeffname: Ségolène  # é\n".encode())
    assert load_yaml(path) == {"name": "Ségolène"}
    path.write_bytes(b"")
    assert load_yaml(path) == {}
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: not a file$"):
        load_yaml(tmp_path)
    with pytest.raises(ConfigError, match="nope.yaml: no such file$"):
        load_yaml(tmp_path / "nope.yaml")


def test_cli_exits_2_with_one_line_naming_a_binary_job_spec(tmp_path, monkeypatch, capsys):
    import sys

    from bratslab.app.main import main

    spec = tmp_path / "job.yaml"
    spec.write_bytes(_PNG)
    # Both set here so that what the CLI exports (pin_settings) is undone after the test.
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(sys, "argv", ["bratslab", "train", str(spec)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err == f"{spec}: not a UTF-8 text file (byte 0x89 at offset 0); expected YAML"


def test_a_bad_set_override_is_named_and_a_near_miss_key_gets_a_suggestion(tmp_path):
    """``--set training.epoch=3`` suggests ``training.epochs``; ``--set training.epochs=abc``
    blames the override, not the YAML file."""
    from bratslab.config import ConfigError
    from bratslab.jobs.spec import load_job

    job = tmp_path / "job.yaml"
    job.write_text("name: j\ndata: {store: s}\nmodel: {arch: unet}\n")
    with pytest.raises(ConfigError) as typo:
        load_job(job, ["training.epoch=3"])
    assert (
        "--set training.epoch=3: training.epoch: unknown key; did you mean training.epochs?"
        in str(typo.value)
    )
    with pytest.raises(ConfigError) as bad:
        load_job(job, ["training.epochs=abc"])
    assert "--set training.epochs=abc: training.epochs:" in str(bad.value)
    job.write_text("name: j\ndata: {store: s}\nmodel: {arch: unet}\ntraining: {epochs: x}\n")
    with pytest.raises(ConfigError) as in_file:
        load_job(job, ["training.lr_warmup=1"])
    lines = str(in_file.value).splitlines()
    assert "  training.epochs: Input should be a valid integer" in "\n".join(lines)
    assert not any(line.startswith("  --set") and "epochs" in line for line in lines)


def test_the_readme_journey_outputs_are_git_ignored():
    """Running the README's "Using it" block in a clone leaves `git status` clean."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["raw/x", "raw_test/x", "store/x", "pred/x", "bratslab-work/x", "metrics.csv"]
    outputs += ["metrics.summary.json", "metrics.png", "submission.csv", "postprocess.json"]
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *outputs], cwd=root, capture_output=True, text=True
    )
    assert sorted(proc.stdout.split()) == sorted(outputs)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "jobs/smoke.yaml"], cwd=root)
    assert kept.returncode == 1  # the repo's own files are not
