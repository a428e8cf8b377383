"""An ensemble folder loads as one payload of member payloads, builds into a network whose
probabilities are the members' mean (what repeated ``--model`` gives), and
``compare-ensemble`` scores it against each member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner


def _members(tmp_path, store=None, outputs=("regions", "regions")):
    from bratslab.data.store import Store
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    extra = {"patch_size": [16, 16, 16], "preprocessing": {"stub": 1}}
    if store is not None:
        st = Store(store)
        extra = {"patch_size": [32, 32, 32], "preprocessing": st.manifest["preprocessing"],
                 "store_fingerprint_hash": st.fingerprint_hash}  # fmt: skip
    out = []
    for k, output in enumerate(outputs):
        torch.manual_seed(k)
        n = 3 if output == "regions" else 4
        cfg = ModelConfig(arch="unet", out_channels=n, output=output, unet={"filters": [4, 8, 8]})
        out.append(save_model_dir(tmp_path / f"m{k}", build_model(cfg), cfg, extra))
    return out


def _ensemble(tmp_path, dirs, name="ens"):
    from bratslab.tracking.model_store import write_ensemble_dir

    members = [(f"fold{k}", d, f"local:{d}") for k, d in enumerate(dirs)]
    return write_ensemble_dir(tmp_path / name, members, {"store": None})


def test_an_ensemble_folder_loads_as_member_payloads(tmp_path):
    from bratslab.inference.model_loading import check_ensemble, load_payload, member_payloads

    dirs = _members(tmp_path)
    payload = load_payload(_ensemble(tmp_path, dirs))
    assert [m.weights for m in payload.members] == [(d / "model.pt").read_bytes() for d in dirs]
    assert payload.info["ensemble"]["members"] == ["fold0", "fold1"]
    assert len(member_payloads([payload, load_payload(dirs[0])])) == 3
    check_ensemble([payload, load_payload(dirs[0])])  # an ensemble mixes with plain models


def test_an_ensemble_of_incompatible_members_is_refused(tmp_path):
    from bratslab.inference.model_loading import load_payload

    dirs = _members(tmp_path, outputs=("regions", "labels"))
    with pytest.raises(ValueError, match="differ in output kind"):
        load_payload(_ensemble(tmp_path, dirs))


def test_a_bad_ensemble_json_names_the_file(tmp_path):
    from bratslab.inference.model_loading import load_payload

    folder = _ensemble(tmp_path, _members(tmp_path))
    data = json.loads((folder / "ensemble.json").read_text())
    data["members"][0]["name"] = "../escape"
    (folder / "ensemble.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="ensemble.json: member name '../escape'"):
        load_payload(folder)


@pytest.mark.parametrize("outputs", [("regions", "regions"), ("labels", "labels")])
def test_the_ensemble_network_predicts_the_members_mean(tmp_path, outputs):
    from bratslab.inference.model_loading import build_from_payload, load_payload
    from bratslab.inference.sliding_window import predict_probabilities

    dirs = _members(tmp_path, outputs=outputs)
    payload = load_payload(_ensemble(tmp_path, dirs))
    members = [build_from_payload(m) for m in payload.members]
    net = build_from_payload(payload)
    x = torch.randn(1, 5, 16, 16, 16)
    act = torch.sigmoid if outputs[0] == "regions" else (lambda t: t.softmax(1))
    with torch.inference_mode():
        mean = sum(act(m(x)) for m in members) / 2
        assert torch.allclose(act(net(x)), mean, atol=1e-6)
    vol = np.random.default_rng(0).normal(size=(5, 24, 20, 16)).astype(np.float32)
    kw = {"roi_size": [16] * 3, "tta": "flips", "amp": False,
          "activation": "sigmoid" if outputs[0] == "regions" else "softmax"}  # fmt: skip
    as_one, _ = predict_probabilities(net, vol, **kw)
    as_many, _ = predict_probabilities(members, vol, **kw)  # predict's repeated --model
    np.testing.assert_allclose(as_one, as_many, atol=1e-5)


def test_compare_ensemble_scores_members_and_ensemble_and_says_which_wins(tiny_store, tmp_path):
    from bratslab.app.main import app
    from bratslab.inference.ensemble_comparison import compare_ensemble, verdicts

    folder = _ensemble(tmp_path, _members(tmp_path, store=tiny_store))
    report = compare_ensemble(folder, tiny_store, max_cases=2)
    assert report.cases == 2 and set(report.members) == {"fold0", "fold1"}
    assert report.same_store and "training store" in report.caveat
    for key in ("dice_mean", "lesion_dice_mean"):
        best = report.best_member[key]
        assert report.members[best][key] == max(m[key] for m in report.members.values())
        assert report.beats[key] == (report.ensemble[key] > report.members[best][key])
    for line, key in zip(verdicts(report), ("dice_mean", "lesion_dice_mean"), strict=True):
        assert ("does NOT beat" in line) == (not report.beats[key])
    assert {"dice_wt", "dice_tc", "dice_et", "lesion_dice_wt", "lesion_dice_et"} <= set(
        report.ensemble
    )

    r = CliRunner().invoke(
        app, ["models", "compare-ensemble", str(folder), "--store", str(tiny_store),
              "--max-cases", "1", "--no-log"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "ENSEMBLE" in r.stdout and "its best member" in r.stdout


def test_compare_ensemble_refuses_a_single_model(tmp_path, tiny_store):
    from bratslab.inference.ensemble_comparison import compare_ensemble

    (single, _) = _members(tmp_path, store=tiny_store)
    with pytest.raises(ValueError, match="not an ensemble"):
        compare_ensemble(single, tiny_store)
