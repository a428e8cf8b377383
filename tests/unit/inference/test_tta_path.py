"""The TTA path chooser: it measures real networks, picks the fastest, caches it, obeys a flag."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch
from torch import nn

from bratslab.inference.sliding_window import predict_probabilities
from bratslab.inference.tta_path import (
    CACHE_NAME,
    TTAPath,
    candidates,
    clear_memo,
    parse_tta_path,
    pick,
)

ROI = (16, 16, 16)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    clear_memo()
    yield tmp_path / "home"
    clear_memo()


class Costly(nn.Module):
    """A tiny conv net that also burns ``per_call + per_sample * batch**power`` CPU seconds per
    call: a fixed cost per call makes batching views pay, a cost that grows faster than the
    batch makes it lose, by margins no machine load can reverse (CPU time is measured)."""

    def __init__(self, per_call: float = 0.0, per_sample: float = 0.0, power: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.cost = (per_call, per_sample, power)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_call, per_sample, power = self.cost
        self.calls.append(x.shape[0])
        end = time.process_time() + per_call + per_sample * x.shape[0] ** power
        while time.process_time() < end:
            pass
        return self.conv(x)


def _volume() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 24, 24, 16)).astype(np.float32)


def _entries(home) -> dict:
    return json.loads((home / "cache" / CACHE_NAME).read_text())["entries"]


def _predict(model, path="auto", **kw):
    return predict_probabilities(model, _volume(), ROI, 0.5, "flips", tta_path=path, **kw)[0]


def test_parse_and_candidates():
    assert parse_tta_path("auto") is None
    assert parse_tta_path("naive") == TTAPath(naive=True, views_per_call=1)
    assert parse_tta_path("perview").name == "perview"
    assert parse_tta_path("batched") == TTAPath(views_per_call=None)
    assert parse_tta_path("batched:4").views_per_call == 4
    for bad in ("fast", "batched:0", "batched:", ""):
        with pytest.raises(ValueError, match="tta_path must be"):
            parse_tta_path(bad)
    # naive is always measured, so the chosen path is never slower than naive in the measurement
    cpu = [p.name for p in candidates(torch.device("cpu"), 8)]
    assert cpu == ["naive", "perview", "batched"]
    cuda = [p.name for p in candidates(torch.device("cuda"), 8)]
    assert cuda == ["naive", "perview", "batched:2", "batched:4", "batched"]
    assert pick({"naive": [2.0, 1.5], "perview": [1.6, 1.4], "batched": [3.0, 3.0]}) == "perview"


def _check_choice(home, chosen: str) -> dict:
    """The one cached entry chose ``chosen``, the least best-of-rounds CPU time, never more
    than naive's; returns the entry."""
    (entry,) = _entries(home).values()
    cpu = entry["cpu_s"]
    assert entry["path"] == chosen and entry["by"] == "cpu"
    assert set(cpu) == {"naive", "perview", "batched"} and all(len(v) == 2 for v in cpu.values())
    assert min(cpu[chosen]) == min(min(v) for v in cpu.values())
    assert min(cpu[chosen]) <= min(cpu["naive"])
    return entry


def test_auto_picks_batched_views_when_calls_are_what_costs(home, caplog):
    model = Costly(per_call=0.01)  # 1 call per window batched, 8 otherwise
    with caplog.at_level(logging.INFO, logger="bratslab.inference.tta_path"):
        auto = _predict(model, amp=False)
    _check_choice(home, "batched")
    line = next(r.getMessage() for r in caplog.records if "measured in" in r.getMessage())
    assert line.startswith("TTA path batched: the least CPU s") and "naive" in line
    np.testing.assert_allclose(auto, _predict(model, "naive", amp=False), atol=1e-5)


def test_auto_avoids_batched_views_when_a_batch_costs_more_than_its_views(home):
    model = Costly(per_sample=0.002, power=2)  # a batch of 8: 128 ms; 8 calls of 1: 16 ms
    # One intra-op thread: an idle OpenMP thread spin-waits after each call and that CPU time
    # counts too, adding a per-call cost that, on a loaded machine, can eat the 8x margin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _predict(model, amp=False)
    finally:
        torch.set_num_threads(threads)
    entry = _check_choice(home, _entries(home).popitem()[1]["path"])
    assert entry["path"] in ("naive", "perview")
    assert min(entry["cpu_s"]["batched"]) > 3 * min(entry["cpu_s"][entry["path"]])


def test_the_cache_is_reused_and_keyed_by_precision_and_window(home):
    model = Costly()
    _predict(model, amp=False)
    measured = len(model.calls)
    model.calls.clear()
    _predict(model, "perview", amp=False)
    one_run = len(model.calls)  # 4 windows x 8 views: the most calls of any path here
    # on one 16³ window: warm-up (batch 1 and 8), 2 rounds of naive (8 calls), perview (8),
    # batched (1); then the prediction itself (4 calls at least)
    assert one_run == 32 and measured >= 2 + 2 * 17 + 4
    for fresh_process in (False, True):  # the in-process memo, then the cache file
        if fresh_process:
            clear_memo()
        model.calls.clear()
        _predict(model, amp=False)
        assert len(model.calls) <= one_run  # no measurement: only the prediction's calls
    assert len(_entries(home)) == 1
    model.calls.clear()
    _predict(model, amp=True)  # another precision: measured and cached under its own key
    assert len(model.calls) >= 2 + 2 * 17 + 4
    predict_probabilities(model, _volume(), (8, 8, 8), 0.5, "flips", amp=False)  # another window
    keys = list(_entries(home))
    assert len(keys) == 3 and any("window 8x8x8" in k for k in keys)
    assert any("bfloat16" in k or "float32" in k for k in keys)


def test_a_fixed_path_or_a_single_view_never_measures(home):
    model = Costly()
    _predict(model, "batched", amp=False)
    assert model.calls == [8] * 4  # 4 windows, their 8 views in one call each
    model.calls.clear()
    _predict(model, "naive", amp=False)
    assert model.calls == [1] * 32  # 8 tilings of 4 windows, one view each
    model.calls.clear()
    predict_probabilities(model, _volume(), ROI, 0.5, "none", amp=False)
    assert model.calls == [1] * 4
    assert not (home / "cache" / CACHE_NAME).exists()


def test_an_unwritable_cache_still_predicts(home):
    home.mkdir(parents=True)
    (home / "cache").write_text("a file where the cache folder should be")
    model = Costly()
    _predict(model, amp=False)
    model.calls.clear()
    _predict(model, amp=False)  # remembered by this process: no second measurement
    assert len(model.calls) <= 32


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "-m", "m", "-i", "in", "-o", "out"],
        ["evaluate-model", "-m", "m", "--store", "s"],
        ["postprocess", "fit", "-m", "m", "--store", "s"],
    ],
)
def test_the_tta_path_flag_is_checked_on_every_command_that_runs_tta(command, tmp_path):
    from typer.testing import CliRunner

    from bratslab.app.main import app

    res = CliRunner().invoke(app, [*command, "--tta-path", "fastest"])
    assert res.exit_code == 2, res.output
    assert "--tta-path" in res.output and "'fastest'" in res.output
    assert "Traceback" not in res.output


def test_predict_config_carries_the_path():
    from bratslab.config import ConfigError, validate
    from bratslab.inference.config import PredictConfig

    assert PredictConfig().tta_path == "auto"
    assert validate(PredictConfig, {"tta_path": "batched:2"}, "opts").tta_path == "batched:2"
    with pytest.raises(ConfigError, match="tta_path"):
        validate(PredictConfig, {"tta_path": "fast"}, "opts")


def test_a_choice_measured_under_load_is_measured_again_when_quiet(home, monkeypatch):
    from bratslab.inference import tta_path

    model = Costly()
    monkeypatch.setattr(tta_path, "_load_avg", lambda: 1000.0)  # an overloaded machine
    _predict(model, amp=False)
    assert next(iter(_entries(home).values()))["load_avg"] == 1000.0
    clear_memo()
    model.calls.clear()
    _predict(model, amp=False)  # still busy: the cached choice is used
    assert len(model.calls) <= 32
    monkeypatch.setattr(tta_path, "_load_avg", lambda: 0.0)  # quiet now
    clear_memo()
    model.calls.clear()
    _predict(model, amp=False)
    assert len(model.calls) >= 2 + 2 * 17 + 4  # measured again
    assert next(iter(_entries(home).values()))["load_avg"] == 0.0
