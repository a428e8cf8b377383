"""A real smoke sweep: Tune + OptunaSearch + ASHA over Ray Train trials, interrupted and resumed,
then TTA re-evaluation and registration in MLflow (SQLite), on tiny synthetic BraTS cases.

The interruption is a Ctrl-C (SIGINT) delivered to the driver the moment the first trial is
recorded as done; Tune saves its state and returns. ``--resume`` must then finish the sweep
without training any already-completed trial again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.data.config import PreprocessConfig
from bratslab.data.runner import run_preprocess
from bratslab.data.synth import synthesize_dataset
from bratslab.spec import load_job
from bratslab.tracking import mlflow_runs, registry
from bratslab.tune.sweep import SweepPaths, resume_sweep, start_sweep

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "it-smoke"
MODEL = "bratslab-sweep-it"


@pytest.fixture(scope="module")
def sweep_store(bratslab_home) -> Path:
    raw = bratslab_home / "sweep_raw"
    synthesize_dataset(raw, 5, "brats2023", seed=3, shape=(48, 48, 40))
    out = bratslab_home / "sweep_store"
    report = run_preprocess(
        raw, out, PreprocessConfig(min_size=32), workers=1, use_ray=False, progress=False
    )
    assert report.exit_code == 0
    return out


def _interrupt_when_first_trial_done(trials_dir: Path, timeout_s: float = 600) -> threading.Thread:
    def watch():
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if list(trials_dir.glob("*.json")):
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; Tune catches it
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_smoke_sweep_interrupt_resume_and_register(sweep_store, bratslab_home, ray_cluster):
    spec = load_job(
        ROOT / "jobs/sweep_smoke.yaml",
        [
            f"data.store={sweep_store}",
            "data.max_val_cases=1",
            "training.steps_per_epoch=2",
            f"sweep.space={ROOT / 'search_spaces/smoke.yaml'}",
            f"sweep.name={NAME}",
            "sweep.num_trials=3",
            f"tracking.experiment={MODEL}",  # no registry_name: the experiment names the model
        ],
    )
    paths = SweepPaths(bratslab_home / "sweeps" / NAME)
    watcher = _interrupt_when_first_trial_done(paths.trials)
    first = start_sweep(spec, job_source="jobs/sweep_smoke.yaml")
    watcher.join(timeout=5)
    assert first.interrupted
    done_before = {p.stem for p in paths.trials.glob("*.json")}
    assert done_before
    assert mlflow_runs.run_info(first.parent_run_id)["status"] == "KILLED"

    second = resume_sweep(NAME)
    assert not second.interrupted
    assert second.parent_run_id == first.parent_run_id
    assert len(second.trials) == 3 and all(r.completed for r in second.trials)
    # No trial that had completed before the interruption trained again.
    for trial_id in done_before:
        attempts = paths.attempts(trial_id).read_text().splitlines()
        assert len(attempts) == 1, (trial_id, attempts)
    # The Optuna study persisted beside the sweep holds all three trials, none left RUNNING.
    import optuna

    study = optuna.load_study(study_name=NAME, storage=paths.optuna_url)
    assert len(study.trials) == 3
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)

    # MLflow: the parent run (results table + Optuna plots) with one nested child run per trial.
    parent = mlflow_runs.run_info(second.parent_run_id)
    assert parent["status"] == "FINISHED"
    assert parent["tags"]["bratslab.sweep"] == NAME
    client = mlflow_runs.client()
    artifacts = {a.path for a in client.list_artifacts(second.parent_run_id)}
    assert {"results.csv", "optuna_history.png"} <= artifacts
    children = client.search_runs(
        [parent["experiment_id"]], f"tags.mlflow.parentRunId = '{second.parent_run_id}'"
    )
    assert len(children) == 3
    assert {c.data.tags["bratslab.trial_id"] for c in children} == {
        r.trial_id for r in second.trials
    }
    assert {c.info.run_id for c in children} == {r.mlflow_run_id for r in second.trials}
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")  # KILLED = stopped by ASHA
        assert "val/dice_mean" in child.data.metrics
        assert "training.optimizer.lr" in child.data.params
    rows = (paths.results_csv).read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("trial_id,")

    # Registry: the TTA-evaluated winner, alias champion, TTA metrics, sweep and params as tags.
    reg = second.registration
    assert reg is not None and reg.promoted
    champ = registry.get_version(MODEL, alias="champion")
    assert champ.version == reg.version
    for key in ("tta/dice_mean", "tta/lesion_dice_mean", "tta/dice_wt", "tta/hd95_mean"):
        assert key in champ.tags, key
    tta_dice = second.winner.tta["tta/dice_mean"]
    assert float(champ.tags["tta/dice_mean"]) == pytest.approx(tta_dice)
    assert champ.tags["bratslab.sweep"] == NAME
    assert champ.tags["bratslab.trial_id"] == second.winner.trial_id
    assert any(k.startswith("param.training.optimizer.lr") for k in champ.tags)
    # The winner's model comes back as a model directory (what `bratslab predict` loads).
    from bratslab.tracking.model_store import fetch_model_dir

    model_dir = fetch_model_dir(f"models:/{MODEL}@champion")
    info = json.loads((model_dir / "model.json").read_text())
    assert info["model"]["arch"] == "unet" and info["patch_size"] == [32, 32, 32]

    # A finished sweep is not resumed (it would register its winner twice).
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["finished"]["winner_trial"] == second.winner.trial_id
    assert manifest["finished"]["registered"] == f"{MODEL}/{reg.version}"
    with pytest.raises(ConfigError, match="already finished"):
        resume_sweep(NAME)


def test_placement_groups_of_dead_controllers_are_removed(ray_cluster):
    """What an ASHA stop leaves behind (a placement group whose creating actor died) is
    removed; groups of live actors and of the driver stay."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from bratslab.tune.harness import remove_orphaned_placement_groups

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    dead, alive = Controller.remote(), Controller.remote()
    dead_pg = ray.get(dead.reserve.remote())
    alive_pg = ray.get(alive.reserve.remote())
    driver_pg = placement_group([{"CPU": 1}])
    ray.get(driver_pg.ready())
    ray.kill(dead)
    deadline = time.monotonic() + 30
    while remove_orphaned_placement_groups() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    table = ray.util.placement_group_table()
    assert table[dead_pg]["state"] == "REMOVED"
    assert table[alive_pg]["state"] == "CREATED"
    assert table[driver_pg.id.hex()]["state"] == "CREATED"
    remove_placement_group(driver_pg)
    ray.kill(alive)  # and its group goes the same way, freeing the session's CPUs
    deadline = time.monotonic() + 30
    while remove_orphaned_placement_groups() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.util.placement_group_table()[alive_pg]["state"] == "REMOVED"
