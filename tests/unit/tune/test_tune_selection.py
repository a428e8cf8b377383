"""Post-sweep selection: ranking, TTA metric names, results table, Optuna plots, and the
champion alias against a real MLflow SQLite store (a worse model does not take it)."""

from __future__ import annotations

import csv
import math
import os

import optuna
import pytest

from bratslab.config import ConfigError
from bratslab.jobs.spec import load_job
from bratslab.tune import selection
from bratslab.tune import sweep_results as report
from bratslab.tune.trial_result import TrialResult

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _rows():
    return [
        TrialResult("a", best_metric=0.5, best_checkpoint="/a", params={"x": 1}),
        TrialResult("b", best_metric=0.7, best_checkpoint="/b", params={"x": 2}),
        TrialResult("c", best_metric=0.9, best_checkpoint=None, params={"x": 3}),
        TrialResult("d", best_metric=math.nan, best_checkpoint="/d"),
        TrialResult("e", best_metric=0.6, best_checkpoint="/e", params={"x": 5}),
    ]


def test_rank_candidates_needs_checkpoint_and_finite_metric():
    assert [r.trial_id for r in selection.rank_candidates(_rows(), "max", 2)] == ["b", "e"]
    assert [r.trial_id for r in selection.rank_candidates(_rows(), "min", 5)] == ["a", "e", "b"]


def test_tta_metrics_and_winner():
    m = selection.tta_metrics({"dice_mean": 0.8, "lesion": {"dice_mean": 0.7}, "cases": [1, 2]})
    assert m == {"tta/dice_mean": 0.8, "tta/lesion/dice_mean": 0.7}
    assert selection.tta_metrics({"tta/dice_wt": 0.9, "ok": True}) == {"tta/dice_wt": 0.9}
    cands = [
        TrialResult("a", tta={"tta/dice_mean": 0.6}),
        TrialResult("b", tta={"tta/dice_mean": 0.8}),
        TrialResult("c", tta={"tta/dice_mean": math.nan}),
        TrialResult("d"),
    ]
    assert selection.pick_winner(cands, "tta/dice_mean", "max").trial_id == "b"
    assert selection.pick_winner(cands, "tta/dice_mean", "min").trial_id == "a"
    assert selection.pick_winner(cands[2:], "tta/dice_mean", "max") is None


def test_default_registry_name_comes_from_the_job():
    # the experiment names the model, unless it is the generic default; then the job name
    assert selection.default_registry_name("sweep-smoke", "bratslab-gli") == "bratslab-gli"
    assert selection.default_registry_name("sweep-smoke", "bratslab") == "sweep-smoke"
    assert selection.default_registry_name("sweep-smoke", "") == "sweep-smoke"
    # sanitised: MLflow rejects "/" and ":", "@" would split models:/NAME@alias
    assert selection.default_registry_name("j", "BraTS GLI / 2024: v2@x") == "BraTS-GLI-2024-v2-x"
    assert selection.model_name("..//..") == "bratslab-model"


def test_registry_name_of_the_shipped_jobs():
    def name(job, *overrides):
        return selection.registry_name(load_job(os.path.join(ROOT, "jobs", job), list(overrides)))

    assert name("demo.yaml") == "bratslab-demo"
    assert name("sweep_smoke.yaml") == "bratslab-sweeps"
    assert name("sweep_smoke.yaml", "tracking.experiment=bratslab") == "sweep-smoke"
    assert name("sweep_smoke.yaml", "sweep.registry_name=mine") == "mine"
    # the GLI sweep registers what the BraTS-Africa finetune starts from
    finetune = load_job(os.path.join(ROOT, "jobs", "finetune_ssa.yaml"))
    assert finetune.model.init_from == f"models:/{name('sweep_mednext.yaml')}@champion"


def test_registry_name_that_mlflow_cannot_use_fails_at_load():
    job = os.path.join(ROOT, "jobs", "sweep_smoke.yaml")
    for bad in ("a/b", "a:b", "a@b", "'  '"):
        with pytest.raises(ConfigError, match="sweep.registry_name"):
            load_job(job, [f"sweep.registry_name={bad}"])


def test_results_csv(tmp_path):
    rows = _rows()
    rows[1].tta = {"tta/dice_mean": 0.75}
    path = report.write_results_csv(tmp_path / "results.csv", rows)
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["a", "b", "c", "d", "e"]
    assert table[1]["tta/dice_mean"] == "0.75" and table[0]["tta/dice_mean"] == ""
    assert table[4]["param:x"] == "5"
    assert list(table[0])[:5] == ["trial_id", "status", "completed", "iterations", "best_metric"]


def test_optuna_plots_from_persisted_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.optimize(
        lambda t: -((t.suggest_float("a", 0, 1) - 0.3) ** 2) + 0 * t.suggest_int("b", 1, 3),
        n_trials=6,
    )
    files = report.optuna_plots(url, "s", tmp_path)
    assert {f.name for f in files} == {"optuna_history.png", "optuna_importances.png"}
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files)
    # an empty study: no plots, no crash
    optuna.create_study(study_name="empty", storage=url)
    assert report.optuna_plots(url, "empty", tmp_path / "e") == []


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _model_dir(path):
    import torch

    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 16]})
    torch.manual_seed(0)
    return save_model_dir(path, build_model(cfg), cfg, {"patch_size": [32, 32, 32]})


def test_worse_model_does_not_take_the_champion_alias(mlflow_store):
    from bratslab.tracking import mlflow_runs, registry

    ckpt = _model_dir(mlflow_store / "ckpt")
    run_ids = [
        mlflow_runs.start_run(experiment="sel", run_name=f"t{i}", params={"i": i}) for i in range(3)
    ]

    def winner(i, dice):
        return TrialResult(
            trial_id=f"t{i}",
            mlflow_run_id=run_ids[i],
            best_checkpoint=str(ckpt),
            iterations=2,
            params={"training.optimizer.lr": 0.001 * (i + 1)},
            tta={"tta/dice_mean": dice, "tta/lesion_dice_mean": dice - 0.1},
        )

    kw = {"name": "bratslab-test", "sweep_name": "sw", "metric": "tta/dice_mean", "mode": "max"}
    first = selection.register_winner(winner(0, 0.80), alias="champion", **kw)
    assert first.promoted and first.version == "1"
    worse = selection.register_winner(winner(1, 0.60), alias="champion", **kw)
    assert not worse.promoted and worse.version == "2"
    champ = registry.get_version("bratslab-test", alias="champion")
    assert champ.version == "1"
    v2 = registry.get_version("bratslab-test", version="2")  # older/worse versions stay
    assert v2.tags["tta/lesion_dice_mean"] == repr(0.6 - 0.1)
    assert v2.tags["bratslab.sweep"] == "sw" and v2.tags["bratslab.trial_id"] == "t1"
    assert v2.tags["param.training.optimizer.lr"] == "0.002"
    # Nothing machine-local in the registry; the version says what it is in words.
    assert not any(str(ckpt) in value for value in v2.tags.values())
    assert v2.description.startswith("Sweep sw, trial t1; selected by tta/dice_mean.")
    assert "training.optimizer.lr=0.002" in v2.description
    keys = [f"tta/{k}_{r}" for k in ("dice", "lesion_dice") for r in ("wt", "tc", "et", "mean")]
    wins = TrialResult(
        trial_id="t9", mlflow_run_id=None, best_checkpoint=None, iterations=1, params={},
        tta=dict.fromkeys(keys, 0.5),
    )  # fmt: skip
    text = selection.describe_winner(wins, "sw", "tta/lesion_dice_mean")
    assert "TTA lesion-wise Dice WT / TC / ET: 0.500 / 0.500 / 0.500 (mean 0.500)." in text
    # a post-treatment model's six regions, in the order its evaluation reported them
    post = [f"tta/{k}_{r}" for k in ("dice", "lesion_dice")
            for r in ("et", "netc", "snfh", "rc", "tc", "wt", "mean")]  # fmt: skip
    wins.tta = dict.fromkeys(post, 0.25)
    text = selection.describe_winner(wins, "sw", "tta/lesion_dice_mean")
    assert "TTA Dice ET / NETC / SNFH / RC / TC / WT: " + " / ".join(["0.250"] * 6) in text
    better = selection.register_winner(winner(2, 0.85), alias="champion", **kw)
    assert better.promoted
    assert registry.get_version("bratslab-test", alias="champion").version == "3"
    # the trial's run points at its logged model
    assert mlflow_runs.run_info(run_ids[2])["tags"]["bratslab.model_uri"] == better.model_uri
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:")
