"""Training through a real local Ray (Train + Data) with MLflow on SQLite.

One 2-worker smoke run covers checkpoints, MLflow logging and a worker killed mid-run; a
second has a worker SIGKILLed from outside mid-epoch (as the OOM killer or a lost node would);
a 1-worker run is crashed and rerun under the same name (driver restart); a finetune from the
smoke model's MLflow URI checks that frozen groups stay bit-identical. The finetune trains its 2
workers from the Ray Data patch stream (``data.loader: ray``, one actor pool sharded through Ray
Train) with ``data.augment.on: device`` (the actors only sample; each worker augments its batch
in torch); the same loader with ``on: loader`` (the default) runs in ``test_two_nodes.py``,
across two Ray nodes.

A fourth run, ``bratslab train`` as a subprocess with a Ray instance of its own, has its Train
worker SIGKILLed as soon as it appears, at every start: the run fails after the bounded restarts
of ``scaling.max_failures`` with one line naming why.

The outside-SIGKILL run, the crashed-then-rerun job and the start-up kills share nothing with
the smoke run (their own run names, 2 + 1 of the session's 6 CPUs, or their own instance), so
they run in background threads while the smoke run trains, as concurrent folds do (``train
--folds --max-parallel``): much of a run's time is Ray Train starting its processes and waiting
on them, which the runs overlap.
Each test then waits for its own run and asserts on it as before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    """The session's tiny store (8 cases, 4 folds); training only reads it."""
    return tiny_store


def _spec(store, name, *overrides):
    from bratslab.jobs.spec import load_job

    base = [
        f"name={name}",
        f"data.store={store}",
        "training.steps_per_epoch=2",
        "training.patch_size=[32,32,32]",
        "training.val_sw_batch_size=2",
    ]
    return load_job(JOB, base + list(overrides))


def failing_loop(fail_epoch: int):
    """The real worker loop, except that the last rank of a fresh (not resumed) attempt dies
    abruptly at the start of ``fail_epoch``, as a killed process or lost node would.

    A closure, so that Ray's cloudpickle ships it by value: workers cannot import this module.
    """

    def loop(config):
        import ray.train

        from bratslab.train.loop import train_loop_per_worker

        ctx = ray.train.get_context()
        fresh = ray.train.get_checkpoint() is None
        last = ctx.get_world_rank() == ctx.get_world_size() - 1

        def exit_at(epoch):
            if epoch == fail_epoch:
                # Wait until the controller has registered the last checkpoint, so the
                # restart deterministically resumes from it (the point of the test).
                ray.train.get_all_reported_checkpoints(timeout_s=120)
                os._exit(1)

        train_loop_per_worker(config, on_epoch_start=exit_at if fresh and last else None)

    return loop


def _history(run_id, key):
    from bratslab.tracking.mlflow_runs import metric_history

    return metric_history(run_id, key)


@pytest.fixture(scope="module")
def background(ray_cluster, store, bratslab_home, tmp_path_factory):
    """The outside-SIGKILL run and the crashed-then-rerun job, started in threads before the
    smoke run trains (which requests this fixture first); their tests wait for them."""
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="train-it")
    runs: dict[str, Future] = {
        "sigkill": pool.submit(
            _sigkill_from_outside, store, bratslab_home, tmp_path_factory.mktemp("sigkill")
        ),
        "resume": pool.submit(
            _crash_then_rerun, store, bratslab_home, tmp_path_factory.mktemp("resume")
        ),
        "startup": pool.submit(_killed_as_they_start, store, tmp_path_factory.mktemp("startup")),
    }
    yield runs
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def smoke_and_listeners(ray_cluster, store, background):
    from listeners import ListenerWatch

    from bratslab.train.trainer import run_training

    # The last worker exits abruptly at the start of epoch 1 on the first attempt.
    # Checkpoints are picked by the lesion-wise score, as the real-data jobs do.
    spec = _spec(
        store, "it-smoke", "training.epochs=2", "training.selection_metric=val/lesion_dice_mean"
    )
    with ListenerWatch() as watch:  # every listener of the session's Ray while it trains
        out = run_training(spec, train_loop=failing_loop(1))
    return spec, out, watch


@pytest.fixture(scope="module")
def smoke(smoke_and_listeners):
    return smoke_and_listeners[:2]


def test_a_two_worker_run_listens_on_loopback_only(smoke_and_listeners):
    """torch.distributed's rendezvous store (rank 0) and gloo's sockets are bound to the node's
    address (127.0.0.1 here), as Ray's own services are: nothing of the run listens on the
    machine's other interfaces (``*:PORT`` was seen before)."""
    *_, watch = smoke_and_listeners
    # The watch did see the Train workers' own listeners (the store among them).
    assert watch.by("ray::RayTrainWorker"), watch.seen
    assert not watch.beyond_loopback(), watch.beyond_loopback()


def test_one_machine_starts_no_preemption_watcher(ray_cluster, smoke):
    """The embedded instance turns Ray Train's preemption watcher off (no node of one machine
    is drained by an autoscaler): its actor, one process per worker-group start, never ran."""
    from ray._private.state import actors  # the GCS's actor table (no dashboard needed)

    classes = {a["ActorClassName"] for a in actors().values()}
    assert {"TrainController", "RayTrainWorker"} <= classes, classes  # Train ran here
    assert "PreemptionWatcher" not in classes


def test_smoke_run_checkpoints_and_logs_to_mlflow(smoke):
    from bratslab.tracking.mlflow_runs import client, run_info
    from bratslab.tracking.model_store import fetch_model_dir
    from bratslab.train.checkpoint import load_train_state

    spec, out = smoke
    info = run_info(out.run_id)
    assert info["status"] == "FINISHED"
    assert info["params"]["training.optimizer.name"] == "adamw"
    assert info["params"]["scaling.num_workers"] == "2"
    assert info["tags"]["bratslab.job"] == "it-smoke"
    assert info["tags"]["bratslab.store_fingerprint"]
    assert info["tags"]["bratslab.git_commit"]
    assert [s for s, _ in _history(out.run_id, "train/loss")] == [0, 1]
    dice = _history(out.run_id, "val/dice_mean")
    assert [s for s, _ in dice] == [0, 1] and all(0 <= v <= 1 for _, v in dice)
    for key in (
        "val/dice_wt",
        "val/dice_tc",
        "val/dice_et",
        "val/lesion_dice_wt",
        "val/lesion_dice_et",
        "val/lesion_dice_mean",
        "lr/enc0",
        "time/epoch_s",
        "throughput/samples_per_s",
        "time/data_wait_frac",
    ):
        assert key in info["metrics"], key
    artifacts = {a.path for a in client().list_artifacts(out.run_id)}
    assert {"job.json", "learning_curve.png"} <= artifacts

    latest = load_train_state(out.latest_checkpoint)
    assert latest["epoch"] == 2 and latest["global_step"] == 4
    # the best checkpoint is the one with the best lesion-wise Dice (voxel Dice only logged)
    best = load_train_state(out.best_checkpoint)["metrics"]
    assert best["ckpt_score"] == best["val/lesion_dice_mean"]
    assert best["ckpt_score"] == max(v for _, v in _history(out.run_id, "val/lesion_dice_mean"))
    assert {p.name for p in out.best_checkpoint.iterdir()} >= {
        "model.pt",
        "model.json",
        "train_state.pt",
        "job.json",
    }
    fetched = fetch_model_dir(out.model_uri)
    assert torch.equal(
        torch.load(fetched / "model.pt", weights_only=True)["output_block.conv.conv.weight"],
        torch.load(out.best_checkpoint / "model.pt", weights_only=True)[
            "output_block.conv.conv.weight"
        ],
    )


def test_the_embedded_instance_keeps_to_itself(ray_cluster, bratslab_home):
    """Its own Ray temp folder (not the host's shared /tmp/ray), and workers that look a
    cluster up without an address (Ray Train's placement-group cleaner) find this one."""
    from bratslab.cluster import ray_temp_dir

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    def addresses_seen_by_a_worker():
        from ray.dashboard.utils import get_address_for_submission_client

        # The State API's server as the cleaner resolves it: the dashboard this instance
        # recorded, on a port of its own (not 8265, where another Ray's dashboard may listen).
        return os.environ.get("RAY_ADDRESS"), get_address_for_submission_client(None)

    gcs, api = ray.get(addresses_seen_by_a_worker.remote())
    assert gcs == ray.get_runtime_context().gcs_address
    assert api.startswith("http://127.0.0.1:") and not api.endswith(":8265"), api
    folder = ray_temp_dir(bratslab_home)
    sessions = list(folder.glob("session_2*"))
    assert sessions and (sessions[0] / "sockets").is_dir()
    assert folder.stat().st_uid == os.getuid()


def test_killed_worker_resumes_from_checkpoint_with_epoch_count_intact(smoke):
    _, out = smoke
    # Epoch 0 ran on the first worker group; the group died at the start of epoch 1 and the
    # restarted group resumed from the epoch-0 checkpoint: each epoch is logged exactly once.
    assert _history(out.run_id, "resumed_from_epoch") == [(0, 0.0), (1, 1.0)]
    assert out.metrics["epoch"] == 1
    # The controller's progress callback wrote one console line per epoch (its log file
    # records what it printed), across the worker-group restart.
    lines = (out.storage_dir / "train_log.txt").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "it-smoke: epoch 1/2",
        "it-smoke: epoch 2/2",
    ]
    assert all("loss " in line and "Dice WT " in line and "ETA " in line for line in lines)


def recording_loop(folder: Path):
    """The real worker loop, recording each worker's rank and pid as it starts (a file
    ``<rank>-<pid>`` per rank and attempt), so the test kills a worker of this run only."""

    def loop(config):
        import ray.train

        from bratslab.train.loop import train_loop_per_worker

        rank = ray.train.get_context().get_world_rank()
        (Path(folder) / f"{rank}-{os.getpid()}").touch()
        train_loop_per_worker(config)

    return loop


def _kill_a_worker_after_first_checkpoint(run_dir: Path, pids: Path, killed: list[int]) -> None:
    """Once the controller has registered epoch 1's checkpoint (it writes its snapshot before
    any callback runs), SIGKILL this run's last-rank Train worker: the group is then in its
    second epoch."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if (run_dir / "checkpoint_manager_snapshot.json").is_file():
            workers = sorted(p.name for p in pids.iterdir())  # "<rank>-<pid>", first attempt
            if workers:
                pid = int(workers[-1].split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.05)


def _sigkill_from_outside(store: Path, home: Path, tmp: Path) -> Callable[[], None]:
    """Trains ``it-sigkill`` with a worker SIGKILLed from outside mid-epoch; returns the
    checks of its outcome (run by the test, in the main thread)."""
    from bratslab.tracking.mlflow_runs import run_info
    from bratslab.train.checkpoint import load_train_state
    from bratslab.train.trainer import run_training

    spec = _spec(
        store,
        "it-sigkill",
        "training.epochs=3",
        "training.steps_per_epoch=4",
        "scaling.max_failures=1",
        "tracking.log_model=false",
    )
    killed: list[int] = []
    run_dir = home / "ray_results" / "it-sigkill"
    pids = tmp / "pids"
    pids.mkdir()
    killer = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint, args=(run_dir, pids, killed), daemon=True
    )
    killer.start()
    out = run_training(spec, train_loop=recording_loop(pids))
    killer.join(10)

    def check() -> None:
        assert len(killed) == 1, "no Ray Train worker found to kill"
        assert run_info(out.run_id)["status"] == "FINISHED"
        # Each epoch logged exactly once, and the restarted group resumed from a checkpoint.
        assert [s for s, _ in _history(out.run_id, "train/loss")] == [0, 1, 2]
        resumed = dict(_history(out.run_id, "resumed_from_epoch"))
        assert resumed[0] == 0.0 and resumed[2] >= 1.0
        latest = load_train_state(out.latest_checkpoint)
        assert latest["epoch"] == 3 and latest["global_step"] == 12

    return check


def test_a_worker_sigkilled_from_outside_mid_epoch_restarts_from_the_checkpoint(background):
    background["sigkill"].result()()


def counting_loop(attempts: Path):
    """The real worker loop, recording each start (one line per rank and attempt)."""

    def loop(config):
        import ray.train

        from bratslab.train.loop import train_loop_per_worker

        with open(attempts, "a") as f:
            f.write(f"{ray.train.get_context().get_world_rank()}\n")
        train_loop_per_worker(config)

    return loop


def test_rerunning_a_crashed_job_resumes_it(background):
    """A crash, a checkpoint that cannot load (the run fails at once, not after every
    restart), the rerun that resumes; then the FINISHED run is never reopened by a rerun."""
    background["resume"].result()


def _crash_then_rerun(store: Path, bratslab_home: Path, tmp_path: Path) -> None:
    """The scenario of :func:`test_rerunning_a_crashed_job_resumes_it`, in a thread."""
    import ray.train

    from bratslab.config import ConfigError
    from bratslab.tracking.mlflow_runs import run_info
    from bratslab.train.failures import FAILURE_TAG, PermanentFailure
    from bratslab.train.trainer import run_training

    job = ("training.epochs=2", "scaling.num_workers=1", "tracking.log_model=false")
    crash = _spec(store, "it-resume", *job, "scaling.max_failures=0")
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(crash, train_loop=failing_loop(1))

    # The epoch-0 checkpoint's train_state.pt swapped for a pickle weights-only loading refuses.
    (ckpt,) = (bratslab_home / "ray_results" / "it-resume").glob("epoch0001-*")
    state = ckpt / "train_state.pt"
    good = state.read_bytes()
    torch.save({"epoch": argparse.Namespace(epoch=1)}, state)
    attempts = tmp_path / "attempts.txt"
    broken = _spec(store, "it-resume", *job, "scaling.max_failures=2")
    with pytest.raises(ray.train.ControllerError) as failed:
        run_training(broken, train_loop=counting_loop(attempts))
    assert isinstance(failed.value.controller_failure, PermanentFailure)
    assert str(ckpt) in str(failed.value.controller_failure)
    assert attempts.read_text().splitlines() == ["0"], "a permanent error was retried"
    info = run_info(json.loads((ckpt.parent / "bratslab_run.json").read_text())["mlflow_run_id"])
    assert info["status"] == "FAILED" and "cannot resume" in info["tags"][FAILURE_TAG]
    state.write_bytes(good)

    rerun = _spec(store, "it-resume", *job)
    out = run_training(rerun)
    assert run_info(out.run_id)["status"] == "FINISHED"
    assert FAILURE_TAG not in run_info(out.run_id)["tags"]  # cleared when it ran again
    # Same MLflow run, epoch 0 from the crashed attempt, epoch 1 after the resume.
    assert _history(out.run_id, "resumed_from_epoch") == [(0, 0.0), (1, 1.0)]
    assert [s for s, _ in _history(out.run_id, "train/loss")] == [0, 1]

    # More epochs under the finished name: refused before anything starts, run untouched.
    with pytest.raises(ConfigError, match=r"already FINISHED .*training\.epochs 2 -> 3"):
        run_training(_spec(store, "it-resume", *job, "training.epochs=3"))
    # The same job again: its recorded outcome, nothing trained, nothing logged.
    again = run_training(rerun)
    assert again.run_id == out.run_id and again.latest_checkpoint == out.latest_checkpoint
    assert again.metrics["epoch"] == 1
    assert run_info(out.run_id)["status"] == "FINISHED"
    assert [s for s, _ in _history(out.run_id, "train/loss")] == [0, 1]


def test_finetune_from_mlflow_model_keeps_frozen_groups_bit_identical(ray_cluster, store, smoke):
    from bratslab.models.param_groups import param_groups
    from bratslab.models.weights import load_model_dir
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.train.trainer import run_training

    _, source = smoke
    spec = _spec(
        store,
        "it-finetune",
        "training.epochs=1",
        "training.steps_per_epoch=3",
        "data.max_val_cases=1",
        "scaling.max_failures=0",
        f"model.init_from={source.model_uri}",
        "training.freeze=[stem,'enc*',bottleneck]",
        "tracking.log_model=false",
        # Patches from a Ray Data actor pool, streamed to the 2 Train workers (issue 28: on
        # device, the actors only sample, with the affine margin; each worker augments).
        "data.loader=ray",
        "data.loader_cpus=0.5",  # 2 workers x 0.5: one actor holding one CPU
        "data.augment.on=device",
    )
    out = run_training(spec, progress=False)
    info = run_info(out.run_id)
    assert info["status"] == "FINISHED"
    assert info["params"]["data.loader"] == "ray"
    assert info["params"]["data.augment.on"] == "device"
    wait = metric_history(out.run_id, "time/data_wait_frac")
    assert [s for s, _ in wait] == [0] and 0.0 <= wait[0][1] <= 1.0
    loss = metric_history(out.run_id, "train/loss")
    assert len(loss) == 1 and loss[0][1] > 0
    assert out.metrics["throughput/samples_per_s"] > 0

    before, _ = load_model_dir(source.best_checkpoint)
    after, _ = load_model_dir(out.latest_checkpoint)
    cfg = spec.model.model_config_only()
    g_before, g_after = param_groups(before, cfg), param_groups(after, cfg)
    for group in ("stem", "enc0", "enc1", "bottleneck"):
        assert all(torch.equal(a, b) for a, b in zip(g_before[group], g_after[group], strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(g_before["dec0"], g_after["dec0"], strict=True)
    )


def _killed_as_they_start(store: Path, tmp: Path) -> Callable[[], None]:
    """``bratslab train`` (a subprocess with a Ray instance of its own) whose Train workers are
    SIGKILLed as soon as they appear, before any trains: start-up failures, which Ray Train 2.60
    retries forever unless ``controller_failure_limit`` is set. Returns the checks."""
    import sys

    import psutil  # noqa: I001  (Ray's bundled copy, on sys.path once Ray is imported)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRATSLAB_", "RAY_ADDRESS"))}
    env.update(BRATSLAB_HOME=str(tmp / "home"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'db'}")
    sets = [f"data.store={store}", "scaling.num_workers=1", "scaling.max_failures=1"]
    argv = [str(Path(sys.executable).with_name("bratslab")), "train", str(JOB), "--name", "it-sk"]
    proc = subprocess.Popen(
        [*argv, *(a for s in sets for a in ("--set", s))], env=env, cwd=tmp,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    killed: list[int] = []
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error, IndexError):
                if child.cmdline()[0].startswith("ray::RayTrainWorker") and child.pid not in killed:
                    child.kill()  # still starting: its training function never runs
                    killed.append(child.pid)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate(timeout=60)[0]

    def check() -> None:
        assert proc.returncode == 1, f"exit {proc.returncode} after {len(killed)} kills:\n{out}"
        # max_failures=1: the first start and one restart, one worker each; then one line.
        assert 1 <= len(killed) <= 2, (killed, out)
        lines = out.splitlines()
        why = "train it-sk: the worker group failed to start (scaling.max_failures=1): "
        assert len([ln for ln in lines if ln.startswith(why)]) == 1, out
        assert len(lines) <= 3, out  # the header's two lines and that one
        assert "Traceback" not in out

    return check


def test_workers_killed_as_they_start_fail_the_run_after_bounded_restarts(background):
    background["startup"].result()()
