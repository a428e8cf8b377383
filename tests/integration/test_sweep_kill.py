"""A sweep driver stopped from outside, as a preemption or ``bratslab jobs stop`` would, three
times in a row, and resumed each time.

The sweep runs as real ``bratslab sweep`` subprocesses in a session of their own that join the
test session's Ray instance (``RAY_ADDRESS``), as a driver on a cluster does: killing the
driver's process group kills the driver and nothing else, and Ray ends the driver's job (its
trial actors, Train workers and placement groups) when it notices the driver is gone.

- SIGTERM while trials run: the driver exits with 143 within ``STOP_WITHIN_S``, the parent run is
  KILLED with ``bratslab.stop_reason=SIGTERM``, and nothing of the sweep listened beyond
  loopback meanwhile.
- ``--resume``, SIGKILLed once the trial interrupted by the SIGTERM has trained to completion:
  nothing in the driver runs, the parent MLflow run stays RUNNING; the trial's Train workers
  listened on loopback only.
- ``--resume`` again, stopped by SIGTERM during its TTA re-evaluation of the top trial (after
  Tune): the same KILLED with its reason, as promptly.
- A last ``--resume`` finishes the sweep without training any completed trial again (their
  results, epochs and MLflow runs kept), registers a champion, ends the parent run FINISHED and
  clears the stop tag. That resumed sweep is then checked as any finished sweep: the parent
  run's results table and Optuna plot, one child run per trial with its params and metrics, the
  TTA re-evaluated winner registered as champion with its TTA metrics and parameters as tags,
  its model directory, and a further ``--resume`` refused (it would register the winner twice).

(A Ctrl-C, SIGINT, is the stop of ``test_postgres.py``.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from listeners import ListenerWatch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
MODEL = "bratslab-sweep-kill-it"
TRIALS = 1  # one trial keeps every stop below (a trial training, completed, re-evaluated)
STOP_WITHIN_S = 60  # SIGTERM → process gone (Tune cleanup, MLflow update, Ray disconnect)
FREED_WITHIN_S = 120  # driver gone → Ray has ended its job and freed the job's CPUs


# What a completed trial's recorded result must keep across the resume.
KEPT = ("epoch", "train/loss", "val/dice_mean", "val/lesion_dice_mean", "checkpoint_path")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _env(home: Path, ray_address: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BRATSLAB_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "RAY_ADDRESS": ray_address,  # the session's instance: it outlives the killed driver
    }
    for key in ("BRATSLAB_ARTIFACTS", "BRATSLAB_OPTUNA_STORAGE"):
        env.pop(key, None)
    return env


def _job_args(store: Path, name: str, tta: str = "none") -> list[str]:
    return [
        str(ROOT / "jobs/sweep_smoke.yaml"),
        *("--set", f"data.store={store}", "--set", "data.max_val_cases=1"),
        *("--set", "training.epochs=1", "--set", "training.steps_per_epoch=2"),
        *("--set", f"sweep.space={ROOT / 'search_spaces/smoke.yaml'}"),
        *("--set", f"sweep.name={name}", "--set", f"sweep.num_trials={TRIALS}"),
        *("--set", "sweep.max_concurrent=1", "--set", "sweep.top_k=1", "--set", f"sweep.tta={tta}"),
        *("--set", f"tracking.experiment={MODEL}"),  # no registry_name: the experiment names it
    ]


def _start(args: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    with log.open("w") as out:
        # A session (and process group) of its own: the signal reaches this driver only.
        return subprocess.Popen(
            [str(BRATSLAB), "sweep", *args], env=env, cwd=cwd, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _resume(name: str, env: dict, log: Path, cwd: Path) -> int:
    """``bratslab sweep --resume NAME`` to the end; its exit code."""
    with log.open("w") as out:
        done = subprocess.run(
            [str(BRATSLAB), "sweep", "--resume", name], env=env, cwd=cwd, stdout=out,
            stderr=subprocess.STDOUT, timeout=420,
        )  # fmt: skip
    return done.returncode


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str, timeout_s=600
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{_tail(log)}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s} s:\n{_tail(log)}"
        time.sleep(0.2)


def _kill_group(proc: subprocess.Popen) -> None:
    """Teardown of a failed test: nothing of the subprocess's session may outlive it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _group_gone(pgid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _wait_cpus_freed(ray, cpus: float) -> None:
    """Until the session's instance has ``cpus`` CPUs free again: the dead driver's job (trial
    actors, Train workers, placement groups) holds none of them any more."""
    deadline = time.monotonic() + FREED_WITHIN_S
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, (
            f"the killed driver's job still holds CPUs after {FREED_WITHIN_S} s: "
            f"{ray.available_resources()} (expected {cpus} CPUs free)"
        )
        time.sleep(0.5)


def _trial_runs(sweep_dir: Path, name: str, trial_ids) -> dict[str, str]:
    """Trial id → its MLflow run id (from the trial's Train run-state file)."""
    from bratslab.train.run_storage import RUN_STATE

    runs = {}
    for tid in trial_ids:
        state = sweep_dir / "train" / f"{name}-{tid}" / RUN_STATE
        runs[tid] = json.loads(state.read_text())["mlflow_run_id"]
    return runs


def _epochs(run_id: str, uri: str) -> list[int]:
    from bratslab.tracking.mlflow_runs import metric_history

    return [step for step, _ in metric_history(run_id, "train/loss", uri)]


def _check_finished_sweep(sweep_dir: Path, name: str, uri: str) -> tuple[dict, list]:
    """The resumed sweep ended as a sweep does: parent FINISHED, every trial done, a champion.
    Returns the sweep's manifest and its child runs."""
    from bratslab.tracking import mlflow_runs

    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    parent_id = manifest["parent_run_id"]
    parent = mlflow_runs.run_info(parent_id, uri)
    assert parent["status"] == "FINISHED"
    assert parent["tags"]["bratslab.sweep"] == name
    assert parent["tags"]["bratslab.interrupted"] == "false"
    assert "bratslab.stop_reason" not in parent["tags"]
    done = {p.stem for p in (sweep_dir / "trials").glob("*.json")}
    assert len(done) == TRIALS
    client = mlflow_runs.client(uri)
    children = client.search_runs(
        [parent["experiment_id"]], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert {c.data.tags["bratslab.trial_id"] for c in children} == done
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.data.tags["bratslab.trial_id"], c.info.status) for c in children
    ]
    # The Optuna study beside the sweep holds every trial once, none left RUNNING.
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * TRIALS
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["bratslab.sweep"] == name
    assert champion.tags["bratslab.trial_id"] == manifest["finished"]["winner_trial"]
    return manifest, children


def _sweep_home(tmp_path: Path, name: str, ray_cluster):
    """``(home, tracking URI, env, sweep folder)`` of one sweep driven as a subprocess."""
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home, ray_cluster.get_runtime_context().gcs_address)
    return home, f"sqlite:///{home / 'mlflow.db'}", env, home / "sweeps" / name


def _completed(sweep_dir: Path) -> set[str]:
    """Ids of the trials whose completion marker (``trials/<id>.json``) is written."""
    return {p.stem for p in (sweep_dir / "trials").glob("*.json")}


def _attempts(sweep_dir: Path) -> dict[str, str]:
    """Each trial's audit file (one line per start of its Train run) by file name."""
    return {p.name: p.read_text() for p in (sweep_dir / "trials").glob("*.attempts.jsonl")}


@pytest.mark.timeout(1800)  # four drivers of one sweep; about 4 minutes on an idle machine
def test_sigterm_sigkill_and_sigterm_again_then_resume_finishes_the_sweep(
    ray_cluster, tiny_store, tmp_path
):
    from bratslab.tracking import mlflow_runs

    name = "stops"
    home, uri, env, sweep_dir = _sweep_home(tmp_path, name, ray_cluster)
    logs = [tmp_path / f"driver{i}.log" for i in range(4)]
    cpus_free = ray_cluster.available_resources().get("CPU", 0)

    # 1. SIGTERM while a trial trains: its audit line is written as its Train run starts.
    with ListenerWatch() as watch:  # the trials' Train workers run in the session's Ray
        proc = _start(_job_args(tiny_store, name, tta="flips"), env, logs[0], home)
        _stop_when(lambda: any((sweep_dir / "trials").glob("*.attempts.jsonl")), proc, logs[0],
                   "trial training")  # fmt: skip
    _wait_cpus_freed(ray_cluster, cpus_free)
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    parent_id = manifest["parent_run_id"]
    _check_stopped(parent_id, uri)
    done_at_sigterm = _completed(sweep_dir)
    assert not done_at_sigterm, "the trial completed before the SIGTERM reached the driver"

    # 2. Resumed, SIGKILLed (preemption: no handler, no cleanup runs) once it has completed the
    # trial. The resume trains the unfinished trial: watched meanwhile.
    with ListenerWatch() as watch2:
        proc = _start(["--resume", name], env, logs[1], home)
        try:
            _wait_until(lambda: _completed(sweep_dir) - done_at_sigterm, proc, logs[1],
                        "completed trial")  # fmt: skip
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            _kill_group(proc)
    assert _group_gone(proc.pid), "a process of the killed driver's session survived"
    _wait_cpus_freed(ray_cluster, cpus_free)
    markers = {p.stem: p.read_text() for p in (sweep_dir / "trials").glob("*.json")}
    assert markers
    attempts_at_kill = _attempts(sweep_dir)
    runs = _trial_runs(sweep_dir, name, markers)
    epochs_before = {tid: _epochs(run_id, uri) for tid, run_id in runs.items()}
    assert all(e == [0] for e in epochs_before.values()), epochs_before
    # Nothing ran in the driver after the signal: its (reopened) parent run was left as it was.
    assert mlflow_runs.run_info(parent_id, uri)["status"] == "RUNNING"

    # 3. Resumed, then stopped again while it re-evaluates the top trial with TTA (after Tune):
    # the same KILLED with its reason, as promptly.
    with ListenerWatch() as watch3:
        proc = _start(["--resume", name], env, logs[2], home)
        # The console's progress line of the re-evaluation ("TTA re-evaluation 1/1: trial ...").
        reevaluating = re.compile(r"TTA re-evaluation \d+/\d+: trial")
        _stop_when(lambda: reevaluating.search(logs[2].read_text()), proc, logs[2],
                   "TTA re-evaluation")  # fmt: skip
    _check_stopped(parent_id, uri)
    # Nothing of the sweep (driver, trial actors, Train workers, their rendezvous store)
    # listened beyond loopback.
    for w in (watch, watch2, watch3):
        assert w.samples and w.by("ray::"), w.seen
        assert not w.beyond_loopback(), w.beyond_loopback()
    # The watches saw Train workers' sockets (so "nothing beyond loopback" covers them): in the
    # first driver's or the resume's training, whichever the 0.2 s sampler caught on a loaded
    # machine (a resume's trial can train between two samples).
    assert watch.by("ray::RayTrainWorker") or watch2.by("ray::RayTrainWorker"), watch2.seen
    _wait_cpus_freed(ray_cluster, cpus_free)
    # Every trial had finished before the stop during TTA: none trains again after it.
    trained = _attempts(sweep_dir)

    # 4. The last resume finishes the sweep: FINISHED, stop tag cleared.
    assert _resume(name, env, logs[3], home) == 0, _tail(logs[3])
    # A further resume, to be refused: started now, it runs while the checks below read (it
    # only reads the finished manifest; the last check waits for its answer).
    again = subprocess.Popen(
        [str(BRATSLAB), "sweep", "--resume", name], env=env, cwd=home, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    final, children = _check_finished_sweep(sweep_dir, name, uri)
    assert final["parent_run_id"] == parent_id
    assert _attempts(sweep_dir) == trained
    # Every trial completed before the SIGKILL kept its result and was not trained again.
    for tid, marker in markers.items():
        # (The replay rewrites the marker; Tune's own keys, e.g. its timestamps, then differ.)
        after = json.loads((sweep_dir / "trials" / f"{tid}.json").read_text())["last_result"]
        before = json.loads(marker)["last_result"]
        assert {k: after.get(k) for k in KEPT} == {k: before.get(k) for k in KEPT}, tid
        key = f"{tid}.attempts.jsonl"
        assert trained[key] == attempts_at_kill[key], (tid, trained[key])
        assert _epochs(runs[tid], uri) == epochs_before[tid], tid
    rows = {r["trial_id"]: r for r in _csv_rows(sweep_dir / "results.csv")}
    assert set(rows) == {p.stem for p in (sweep_dir / "trials").glob("*.json")}
    for tid, marker in markers.items():
        assert rows[tid]["mlflow_run_id"] == runs[tid]
        recorded = json.loads(marker)["last_result"]["val/dice_mean"]
        assert float(rows[tid]["best_metric"]) == pytest.approx(recorded)
    _check_what_a_finished_sweep_leaves(sweep_dir, name, home, env, final, children, again)
    # The drivers joined the session's instance with RAY_ADDRESS while the other pytest worker's
    # instance ran on the host too: every worker of theirs (Ray Train's placement-group cleaner
    # looks "the" cluster up) found its own, never both.
    log = (sweep_dir / "bratslab.log").read_text()
    assert "Found multiple active Ray instances" not in log


def _stop_when(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str) -> None:
    """SIGTERM the driver once ``ready()``: it exits 143 within ``STOP_WITHIN_S``, saying so, and
    nothing of its session is left."""
    try:
        _wait_until(ready, proc, log, what)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # what `bratslab jobs stop` and Kubernetes send
        try:
            rc = proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_S} s after SIGTERM:\n{_tail(log)}")
        stopped_in = time.monotonic() - t0
    finally:
        _kill_group(proc)
    assert rc == 143, f"exit {rc} after {stopped_in:.1f} s:\n{_tail(log)}"
    assert "stopped by SIGTERM" in log.read_text()
    assert _group_gone(proc.pid)


def _check_stopped(parent_id: str, uri: str) -> None:
    """The sweep's parent run: KILLED by SIGTERM, interrupted (not FAILED)."""
    from bratslab.shutdown import STOP_REASON_TAG
    from bratslab.tracking import mlflow_runs

    parent = mlflow_runs.run_info(parent_id, uri)
    assert parent["status"] == "KILLED"
    assert parent["tags"][STOP_REASON_TAG] == "SIGTERM"
    assert parent["tags"]["bratslab.interrupted"] == "true"


def _check_what_a_finished_sweep_leaves(
    sweep_dir: Path,
    name: str,
    home: Path,
    env: dict,
    manifest: dict,
    children: list,
    again: subprocess.Popen,
) -> None:
    """MLflow's parent and child runs, the registered champion and its model directory, and a
    refused second resume (``again``, started once the sweep had finished)."""
    from bratslab.tracking import mlflow_runs
    from bratslab.tracking.model_store import fetch_model_dir

    uri = env["MLFLOW_TRACKING_URI"]
    client = mlflow_runs.client(uri)
    parent_id = manifest["parent_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"results.csv", "optuna_history.png"} <= artifacts
    for child in children:
        assert "val/dice_mean" in child.data.metrics
        assert "training.optimizer.lr" in child.data.params
    rows = (sweep_dir / "results.csv").read_text().splitlines()
    assert len(rows) == TRIALS + 1 and rows[0].startswith("trial_id,")

    # The TTA-evaluated winner: alias champion, TTA metrics, sweep and params as tags.
    champ = client.get_model_version_by_alias(MODEL, "champion")
    assert manifest["finished"]["registered"] == f"{MODEL}/{champ.version}"
    for key in ("tta/dice_mean", "tta/lesion_dice_mean", "tta/dice_wt", "tta/hd95_mean"):
        assert key in champ.tags, key
    winner = next(
        c for c in children if c.data.tags["bratslab.trial_id"] == champ.tags["bratslab.trial_id"]
    )
    assert float(champ.tags["tta/dice_mean"]) == pytest.approx(winner.data.metrics["tta/dice_mean"])
    assert any(k.startswith("param.training.optimizer.lr") for k in champ.tags)
    # The winner's model comes back as a model directory (what `bratslab predict` loads).
    model_dir = fetch_model_dir(f"models:/{MODEL}@champion", uri=uri, cache=home / "cache")
    info = json.loads((model_dir / "model.json").read_text())
    assert info["model"]["arch"] == "unet" and info["patch_size"] == [32, 32, 32]

    # A finished sweep is not resumed (it would register its winner twice): exit 2, and why.
    out, err = again.communicate(timeout=120)
    assert again.returncode == 2, out + err
    assert "already finished" in out + err


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))
