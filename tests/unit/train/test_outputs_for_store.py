"""model.out_channels follows the store's profile; models of one profile are not scored or
post-processed as another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.data.region_set import region_set
from bratslab.inference.model_eval import check_same_regions
from bratslab.inference.model_loading import ModelPayload
from bratslab.inference.predict import check_postprocess_regions
from bratslab.jobs.spec import load_job
from bratslab.postprocess.config import PostprocessConfig
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


def test_wt_tc_et_thresholds_are_refused_for_a_post_treatment_model():
    pp = PostprocessConfig(min_size_wt=10)
    check_postprocess_regions(pp, _payload(None))  # a BraTS 2023 model: applied
    check_postprocess_regions(None, _payload("gli-post"))  # nothing to apply: fine
    with pytest.raises(ValueError, match="WT/TC/ET only.*brats2024-gli.*--no-postprocess"):
        check_postprocess_regions(pp, _payload("gli-post"))


def test_a_model_is_scored_only_on_a_store_of_its_regions():
    check_same_regions(region_set("brats2023-gli"), region_set("brats2021"), "m", "s")
    with pytest.raises(ValueError, match="predicts the brats2024-gli regions.*brats2023-gli"):
        check_same_regions(region_set("gli-post"), region_set("brats2023-gli"), "m", "store")
