"""Threshold files and fit options: clear errors naming the file and the key."""

from __future__ import annotations

import json

import pytest

from bratslab.config import ConfigError, validate
from bratslab.postprocess.config import FitConfig, PostprocessConfig, load_config_file


def test_defaults_are_a_noop():
    cfg = PostprocessConfig()
    assert cfg.is_noop and cfg.summary() == "none"
    assert PostprocessConfig(min_size_et=5).summary() == "min_size_et=5"


def test_both_file_forms_load(tmp_path):
    fit_out = tmp_path / "postprocess.json"
    fit_out.write_text(json.dumps({"config": {"min_size_wt": 50}, "fit": {"fold": 0}}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"min_size_tc": 10, "et_to_ncr_below": 20}))
    assert load_config_file(fit_out) == PostprocessConfig(min_size_wt=50)
    assert load_config_file(bare) == PostprocessConfig(min_size_tc=10, et_to_ncr_below=20)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"config": {"min_size_wt": -5}}, r"config\).*\n  min_size_wt: Input should be greater"),
        ({"min_size_et": "big"}, r"min_size_et: Input should be a valid integer"),
        ({"min_size_ET": 5}, r"min_size_ET: unknown key"),
        ([1, 2], r"expected a JSON object of thresholds, got list"),
    ],
)
def test_invalid_files_name_the_file_and_the_key(tmp_path, content, expected):
    path = tmp_path / "pp.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=expected) as err:
        load_config_file(path)
    assert str(path) in str(err.value)


def test_unreadable_or_missing_file(tmp_path):
    path = tmp_path / "pp.json"
    with pytest.raises(FileNotFoundError, match="no such post-processing file"):
        load_config_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="pp.json: not valid JSON"):
        load_config_file(path)


def test_fit_config_validation():
    with pytest.raises(ConfigError, match="candidates must be >= 0"):
        validate(FitConfig, {"candidates": [0, -1]}, "fit")
    with pytest.raises(ConfigError, match="scale must be > 0"):
        validate(FitConfig, {"scale": 0.0}, "fit")
    with pytest.raises(ConfigError, match="candidates: List should have at least 1 item"):
        validate(FitConfig, {"candidates": []}, "fit")
