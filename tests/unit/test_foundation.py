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
