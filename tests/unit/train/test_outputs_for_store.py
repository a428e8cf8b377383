"""model.out_channels follows the store's profile; models of one profile are not scored or
post-processed as another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bratslab.config import ConfigError, validate
from bratslab.data.region_set import region_set
from bratslab.inference.model_eval import check_same_regions
from bratslab.inference.model_loading import ModelPayload
from bratslab.jobs.spec import load_job
from bratslab.postprocess.config import PostprocessConfig
from bratslab.postprocess.resolve import check_fits_regions
from bratslab.train.prepared_data import outputs_for_store

JOB = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"


def test_out_channels_fit_a_brats2023_store(tiny_store):
    spec = load_job(JOB, [f"data.store={tiny_store}"])
    assert outputs_for_store(spec).model.out_channels == 3
    labels = load_job(JOB, [f"data.store={tiny_store}", "model.output=labels"])
    assert outputs_for_store(labels).model.out_channels == 4  # softmax over 0, 1, 2, 3
    wrong = load_job(JOB, [f"data.store={tiny_store}", "model.out_channels=5"])
    with pytest.raises(ConfigError, match="out_channels is 5.*brats2023-gli.*3 regions"):
        outputs_for_store(wrong)


def _payload(profile: str | None) -> ModelPayload:
    info = {"model": {"output": "regions"}, **({"profile": profile} if profile else {})}
    return ModelPayload(info=info, weights=b"", source=f"model-{profile}")


def _check(pp, profile):
    payload = _payload(profile)
    check_fits_regions(pp, payload.regions, payload.source)


def test_thresholds_fit_only_the_regions_they_were_fitted_for():
    pp = PostprocessConfig(min_size_wt=10)
    _check(pp, None)  # a BraTS 2023 model: applied
    _check(None, "gli-post")  # nothing to apply: fine
    with pytest.raises(ValueError, match="for brats2021/2023.*brats2024-gli.*--no-postprocess"):
        _check(pp, "gli-post")
    post = PostprocessConfig(profile="gli", min_size={"rc": 20})
    assert post.profile == "brats2024-gli" and post.summary() == "min_size_rc=20"
    _check(post, "gli-post")
    with pytest.raises(ValueError, match="for brats2024-gli; model-None predicts the brats2023"):
        _check(post, None)
    with pytest.raises(ConfigError, match="not regions of brats2024-gli"):
        validate(PostprocessConfig, {"profile": "gli", "min_size": {"ncr": 5}}, "pp.json")
    with pytest.raises(ConfigError, match="set profile too"):
        validate(PostprocessConfig, {"min_size": {"rc": 5}}, "pp.json")


def test_a_model_is_scored_only_on_a_store_of_its_regions():
    check_same_regions(region_set("brats2023-gli"), region_set("brats2021"), "m", "s")
    with pytest.raises(ValueError, match="predicts the brats2024-gli regions.*brats2023-gli"):
        check_same_regions(region_set("gli-post"), region_set("brats2023-gli"), "m", "store")
