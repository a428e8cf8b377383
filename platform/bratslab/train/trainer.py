"""The training driver: job spec → Ray Train ``TorchTrainer`` → MLflow run → best model.

:func:`run_training` is what ``bratslab train`` and each Ray Tune trial call. It

1. checks that ``data.store`` holds a store (a ``ConfigError`` before anything is created),
   reads its manifest into a case table (``data.loader: thread``: a plain list in the loop
   config, each worker taking every N-th row; ``ray``: a Ray Data patch stream Ray Train
   shards per worker),
2. opens (or, for a rerun of the same job name, reopens) one MLflow run,
3. runs :func:`bratslab.train.loop.train_loop_per_worker` on N workers with fault tolerance:
   ``FailureConfig(max_failures)`` restarts the worker group from the latest checkpoint
   (bounded in start-up too, a checkpoint that cannot load not retried:
   :mod:`bratslab.train.failures`), and a rerun with the same name finds the run folder
   ``$BRATSLAB_HOME/ray_results/<name>`` and resumes from its latest checkpoint (Ray Train V2
   reloads its checkpoint-manager snapshot) unless its MLflow run FINISHED, which is never
   reopened (:mod:`bratslab.train.rerun`),
4. logs per-epoch metrics from a :class:`~bratslab.train.mlflow_callback.MLflowCallback` in the
   Train controller (workers never
   talk to MLflow; one ``log_batch`` per epoch, MLflow opened while the controller starts)
   and prints one progress line per epoch on the driver's console
   (:mod:`bratslab.train.progress`), then logs the job, a learning-curve plot and the best
   checkpoint as a model (:mod:`bratslab.train.run_record`).

Storage (:func:`bratslab.train.run_storage.run_storage`): Ray Train persists checkpoints under
``BRATSLAB_RAY_STORAGE`` (default ``$BRATSLAB_HOME/ray_results``). A local folder must be one every
node sees when running on a cluster (a shared mount), as must a local ``data.store``; an ``s3://``
store is copied to each node instead (:mod:`bratslab.data.remote`). With
``BRATSLAB_RAY_STORAGE=s3://bucket/prefix`` the checkpoints are objects under ``prefix/<name>/``
(resuming a rerun reads them from there), while the job's own files (``bratslab_run.json``,
``train_log.txt``) stay in the driver's ``$BRATSLAB_HOME/ray_results/<name>/``; the best and latest
checkpoints are downloaded into ``checkpoints/`` there before the best is logged as a model, and
the MLflow tag ``bratslab.best_checkpoint`` names its object prefix
(``s3://bucket/prefix/<name>/epoch0002-...``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab import console
from bratslab.cluster import ensure_ray, stop_driver
from bratslab.compat.ray_torch import NodeBoundTorchConfig
from bratslab.names import check_name
from bratslab.shutdown import Terminated, call_interruptibly, stop_on_signals
from bratslab.tracking.mlflow_runs import tracking_uri
from bratslab.tracking.model_store import fetch_model_dir
from bratslab.train import failures
from bratslab.train.checkpoint import load_weights
from bratslab.train.loop import train_loop_per_worker
from bratslab.train.mlflow_callback import MLflowCallback
from bratslab.train.outcome import TrainOutcome
from bratslab.train.prepared_data import (
    PreparedData,
    outputs_for_store,
    prepare_data,
    train_dataset,
)
from bratslab.train.progress import LOG_FILE, progress_callback
from bratslab.train.rerun import finished_run, recorded_outcome
from bratslab.train.run_record import close_failed, close_stopped, open_run, record_run, run_params
from bratslab.train.run_storage import RUN_STATE, run_storage

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)


# What each Ray Train run spends besides the training step (issue 17). Both are on by default;
# benchmarks/bench_train.py turns each off in an arm of its own to measure what it saves.
# The thread loader's case table (ids and paths, a few hundred bytes per case) travels in the
# loop config: a Ray Data dataset would start a DatasetManager, a SplitCoordinator, a stats
# and an autoscaling actor, and run a split on every epoch, on the cores the step uses.
CASE_TABLE_IN_CONFIG = True
# The controller imports MLflow and opens the store while it starts, before any worker exists:
# at the first report instead (~2 CPU-s) it competes with the workers' second epoch.
WARM_MLFLOW_IN_CONTROLLER = True


def _init_weights_ref(spec: JobSpec):
    """Fetch ``model.init_from`` on the driver and ship the state dict via the object store
    (workers on other nodes need neither MLflow access nor the driver's filesystem)."""
    if not spec.model.init_from:
        return None
    import ray  # Ray

    return ray.put(load_weights(fetch_model_dir(spec.model.init_from)))


def build_trainer(
    spec: JobSpec,
    *,
    name: str | None = None,
    mlflow_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    storage_path: str | Path | None = None,
    data: PreparedData | None = None,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
):
    """A ready-to-``fit()`` :class:`ray.train.torch.TorchTrainer` for ``spec``.

    Args:
        name: Ray run name (default ``spec.name``); the folder under ``storage_path``.
        mlflow_run_id: log per-epoch metrics to this MLflow run (from the controller).
        callbacks: extra ``ray.train.UserCallback`` s, e.g. Tune's ``TuneReportCallback``.
        storage_path: a folder or ``s3://bucket/prefix`` (:func:`run_storage`; default
            ``BRATSLAB_RAY_STORAGE``, else ``$BRATSLAB_HOME/ray_results``).
        train_loop: the worker function, called with the loop config (default
            :func:`bratslab.train.loop.train_loop_per_worker`; tests wrap it to inject faults).
        progress: print one line per epoch on the driver's console and append it to
            ``train_log.txt`` in the run folder (:mod:`bratslab.train.progress`).
    """
    import ray.train  # Ray
    from ray.train.torch import TorchTrainer  # Ray

    ensure_ray()
    data = data or prepare_data(spec)
    name = name or spec.name
    storage = run_storage(storage_path)
    sc = spec.scaling
    config = {
        "job": spec.resolved(),
        "job_type": type(spec),  # the worker validates "job" into this class (no jobs import)
        "patch_size": data.patch_size,
        "val_rows": data.val_rows,
        "model_extra": data.model_extra,
        "init_weights": _init_weights_ref(spec),
    }
    datasets = None
    if spec.data.loader == "thread" and CASE_TABLE_IN_CONFIG:
        config["train_rows"] = data.train_rows  # each worker takes rows[rank::world]
    else:
        datasets = {"train": train_dataset(spec, data)}  # Ray Data: sharded per worker
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config=config,
        # The process group's store and sockets listen on the node's address only (127.0.0.1 on
        # the embedded instance), not on every interface as Ray's default backend does.
        torch_config=NodeBoundTorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})},
            placement_strategy=sc.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.ray_path,
            storage_filesystem=storage.filesystem,
            # Restarts bounded in start-up as in training (bratslab.train.failures).
            failure_config=failures.failure_config(sc.max_failures),
            # Ray Train logs every report at INFO ("Reporting training result ..." with the whole
            # metrics dict); the one-line epoch progress (train/progress.py) says it readably.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.training.checkpoints_to_keep,
                checkpoint_score_attribute="ckpt_score",
                checkpoint_score_order="max",
            ),
            callbacks=_callbacks(spec, storage.run_dir(name), mlflow_run_id, callbacks, progress),
        ),
        datasets=datasets,
    )


def _callbacks(
    spec: JobSpec, run_dir: Path, mlflow_run_id: str | None, extra: Sequence[Any], progress: bool
) -> list[Any]:
    """The controller's callbacks: fail-fast on permanent errors, MLflow logging, the console
    progress line, then ``extra``."""
    out: list[Any] = [failures.fail_fast_callback()]
    if mlflow_run_id:
        out.append(MLflowCallback(mlflow_run_id, tracking_uri(), WARM_MLFLOW_IN_CONTROLLER))
    if progress:
        out.append(progress_callback(run_dir.name, spec.training.epochs, run_dir / LOG_FILE))
    return out + list(extra)


def run_training(
    spec: JobSpec,
    *,
    name: str | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    storage_path: str | Path | None = None,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train ``spec`` end to end and record it in MLflow; see the module docstring.

    Args:
        name: run name (Ray folder + MLflow run name); default ``spec.name``. A sweep passes
            its trial name. Rerunning an existing name resumes it; one whose MLflow run
            FINISHED is not reopened: the same job returns its recorded outcome.
        parent_run_id: nest the MLflow run under this one (overrides ``tracking.parent_run_id``).
        callbacks: extra ``ray.train.UserCallback`` s (e.g. ``TuneReportCallback()``; every
            report carries ``val/dice_mean``).
        storage_path: Ray results root, a folder or ``s3://bucket/prefix`` (see
            :func:`run_storage`); default ``BRATSLAB_RAY_STORAGE``, else
            ``$BRATSLAB_HOME/ray_results``.
        train_loop, progress: see :func:`build_trainer`.

    Raises:
        ConfigError: ``data.store`` holds no store, the storage is not a folder or an
            ``s3://`` URI, the name is not a safe folder name, or it names a FINISHED run of
            another job (all checked before anything is created).
        Terminated: SIGTERM or SIGINT arrived during training (main thread only); the MLflow
            run is then KILLED with the tag ``bratslab.stop_reason`` and the persisted
            checkpoints stay for a rerun to resume from.
    """
    name = check_name(name or spec.name, "run name")  # it becomes a folder under root
    storage = run_storage(storage_path)  # ConfigError for a bad URI, before anything is created
    spec.data.store_path()  # ConfigError naming the paths tried, before anything is created
    spec = outputs_for_store(spec)  # one output channel per region of the store's profile
    data = prepare_data(spec)
    run_dir = storage.run_dir(name)
    # A FINISHED run is never reopened: the same job again is its recorded outcome, another
    # job under its name is refused (ConfigError) before anything starts (train/rerun.py).
    finished = finished_run(run_dir / RUN_STATE, run_params(spec, data), name)
    if finished is not None:
        return recorded_outcome(name, finished, storage)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.attach(run_dir)  # a quiet command's log file: bratslab.log beside the checkpoints
    run_id = open_run(spec, name, run_dir, parent_run_id, data)
    ensure_ray()  # before the handlers: ray.init installs a SIGTERM handler of its own
    # SIGTERM/SIGINT → Terminated: the run is marked KILLED (the checkpoints Ray Train has
    # persisted stay, and rerunning the name resumes from the latest); in a Tune trial's
    # thread no handlers are installed and fit() runs as before.
    with stop_on_signals():
        try:
            trainer = build_trainer(
                spec,
                name=name,
                mlflow_run_id=run_id,
                callbacks=callbacks,
                storage_path=storage_path,
                data=data,
                train_loop=train_loop,
                progress=progress,
            )
            result = call_interruptibly(trainer.fit, name=f"fit-{name}")
            outcome = record_run(spec, name, run_id, storage, result)
        except Terminated as stop:
            # The run's status first: `ray job stop` sends SIGKILL 3 s after its SIGTERM
            # (RAY_JOB_STOP_WAIT_TIME_S), and an epoch the controller still registers
            # meanwhile is logged consistently with the checkpoint a rerun resumes from.
            close_stopped(name, run_id, stop)
            stop_driver()
            raise
        except BaseException as e:
            failures.record(run_id, e, spec.scaling.max_failures)  # the cause, as a tag
            close_failed(run_id, e)
            raise
    log.info("job %s finished: best %s (run %s)", name, outcome.best_checkpoint, run_id)
    return outcome
