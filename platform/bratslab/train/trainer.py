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
4. logs per-epoch metrics from a :class:`MLflowCallback` in the Train controller (workers never
   talk to MLflow; one ``log_batch`` per epoch, MLflow opened while the controller starts)
   and prints one progress line per epoch on the driver's console
   (:mod:`bratslab.train.progress`), then logs the job, a learning-curve plot and the best
   checkpoint as a model.

Storage (:func:`run_storage`): Ray Train persists checkpoints under ``BRATSLAB_RAY_STORAGE``
(default ``$BRATSLAB_HOME/ray_results``). A local folder must be one every node sees when running
on a cluster (a shared mount), as must a local ``data.store``; an ``s3://`` store is copied to
each node instead (:mod:`bratslab.data.remote`). With ``BRATSLAB_RAY_STORAGE=s3://bucket/prefix``
the checkpoints are objects under ``prefix/<name>/`` (resuming a rerun reads them from there),
while the job's own files (``bratslab_run.json``, ``train_log.txt``) stay in the driver's
``$BRATSLAB_HOME/ray_results/<name>/``; the best and latest checkpoints are downloaded into
``checkpoints/`` there before the best is logged as a model, and the MLflow tag
``bratslab.best_checkpoint`` names its object prefix (``s3://bucket/prefix/<name>/epoch0002-...``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab import console
from bratslab.atomic import write_json, write_text
from bratslab.settings import get_settings

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)

RUN_STATE = "bratslab_run.json"  # beside Ray's files: which MLflow run this job writes to
WORKER_NODES_TAG = "bratslab.worker_nodes"  # MLflow tag: "0=IP,1=IP", each rank's node
LOGGED_EVERY_EPOCH = ("train/loss", "time/epoch_s", "time/train_s", "time/train_cpu_s")
LOGGED_EVERY_EPOCH += ("time/data_wait_frac",)
LOGGED_EVERY_EPOCH += ("throughput/samples_per_s", "resumed_from_epoch")
LOGGED_ON_VALIDATION = ("val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean", "time/val_s")
LOGGED_ON_VALIDATION += (
    "val/lesion_dice_wt",
    "val/lesion_dice_tc",
    "val/lesion_dice_et",
    "val/lesion_dice_mean",
)


CHECKPOINT_COPIES = "checkpoints"  # in the run folder: local copies of s3:// checkpoints

# What each Ray Train run spends besides the training step (issue 17). Both are on by default;
# benchmarks/bench_train.py turns each off in an arm of its own to measure what it saves.
# The thread loader's case table (ids and paths, a few hundred bytes per case) travels in the
# loop config: a Ray Data dataset would start a DatasetManager, a SplitCoordinator, a stats
# and an autoscaling actor, and run a split on every epoch, on the cores the step uses.
CASE_TABLE_IN_CONFIG = True
# The controller imports MLflow and opens the store while it starts, before any worker exists:
# at the first report instead (~2 CPU-s) it competes with the workers' second epoch.
WARM_MLFLOW_IN_CONTROLLER = True


@dataclass
class TrainOutcome:
    """What a finished job produced.

    ``storage_dir`` is the local run folder (``bratslab_run.json``, ``train_log.txt``);
    ``best_checkpoint`` and ``latest_checkpoint`` are local folders (with ``s3://`` storage,
    copies in ``storage_dir/checkpoints``); ``best_checkpoint_uri`` is where Ray persisted the
    best one (a path, or an ``s3://`` URI).
    """

    name: str
    run_id: str
    storage_dir: Path
    best_checkpoint: Path | None
    latest_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    model_uri: str | None = None
    best_checkpoint_uri: str | None = None


@dataclass(frozen=True)
class RunStorage:
    """Where a job's files go: Ray Train's checkpoints (``ray_path`` on ``filesystem``, the
    ``RunConfig`` storage) and bratslab's own run files (``local_root/<name>/``)."""

    ray_path: str
    local_root: Path
    filesystem: Any = None  # a pyarrow S3FileSystem for s3:// storage; None: a local folder

    @property
    def remote(self) -> bool:
        return self.filesystem is not None

    def run_dir(self, name: str) -> Path:
        return self.local_root / name

    def uri(self, fs_path: str) -> str:
        """A path on the storage filesystem as a user names it: ``s3://bucket/key`` or a path."""
        from bratslab.data.remote import SCHEME

        return SCHEME + fs_path if self.remote else fs_path


def run_storage(storage_path: str | Path | None = None) -> RunStorage:
    """Resolve the storage of a job: ``storage_path`` if given, else ``BRATSLAB_RAY_STORAGE``,
    else ``$BRATSLAB_HOME/ray_results``; a folder holds both Ray's and bratslab's files.

    An ``s3://bucket/prefix`` becomes ``RunConfig(storage_path="bucket/prefix",
    storage_filesystem=...)``. Ray pickles the ``RunConfig`` into the Train controller and
    every worker (and its checkpoints carry the filesystem back), and pyarrow pickles an
    ``S3FileSystem``'s options, access keys included. So the filesystem is built without keys
    (:func:`bratslab.data.remote.s3_filesystem` with ``keys=False``: endpoint and region only)
    and each process's AWS SDK finds them in its own environment, as it does for ``s3://``
    stores. Ray 2.60 would also accept the URI form (``s3://b/p?endpoint_override=...``, parsed
    by ``pyarrow.fs.FileSystem.from_uri`` in each process), equally free of secrets; the helper
    keeps one place that reads and checks the ``AWS_*`` endpoint and region (and a region given
    explicitly spares the SDK a lookup).

    Raises:
        ConfigError: a URI with another scheme, or a bucket name S3 would refuse.
    """
    from bratslab.config import ConfigError
    from bratslab.data.remote import is_remote, parse_uri, s3_filesystem

    settings = get_settings()
    local_default = settings.home / "ray_results"
    target = str(storage_path) if storage_path is not None else settings.ray_storage
    if not target:
        return RunStorage(str(local_default), local_default)
    if not is_remote(target):
        folder = Path(target).expanduser().absolute()
        return RunStorage(str(folder), folder)
    try:
        u = parse_uri(target)
    except ConfigError as e:
        where = "storage_path" if storage_path is not None else "BRATSLAB_RAY_STORAGE"
        raise ConfigError(f"{where}: {e}") from None
    return RunStorage(u.key(""), local_default, s3_filesystem(keys=False))


@dataclass
class PreparedData:
    """Driver-side facts about the data, computed once per job."""

    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    patch_size: list[int]
    model_extra: dict[str, Any]


def prepare_data(spec: JobSpec) -> PreparedData:
    """Read the store's manifest: case rows for the fold, patch size, model.json extras.

    An ``s3://`` store is synced into this node's cache first (``DataSection.store_path``) and
    its rows name objects (``s3://.../{id}_x.npy``): each worker maps them onto its own node's
    copy (:func:`bratslab.data.remote.localize_rows`)."""
    from bratslab.data.loader import case_rows
    from bratslab.data.remote import rows_to_uris
    from bratslab.data.store import Store
    from bratslab.models.zoo import shape_factor

    store = Store(spec.data.store_path())
    patch = list(spec.training.patch_size or store.patch_size or [])
    if not patch:
        raise ValueError(f"{store.path}: no patch_size in the store; set training.patch_size")
    factor = shape_factor(spec.model.model_config_only())
    if any(p % factor for p in patch):
        raise ValueError(
            f"training.patch_size {patch}: every size must be a multiple of {factor} "
            f"(2**levels of the {spec.model.arch} model)"
        )
    uri = spec.data.store
    train_rows = rows_to_uris(case_rows(store, spec.data.fold, "train"), store.path, uri)
    val_rows = rows_to_uris(case_rows(store, spec.data.fold, "val"), store.path, uri)
    if spec.data.max_val_cases:
        val_rows = val_rows[: spec.data.max_val_cases]
    extra = {
        "preprocessing": store.manifest["preprocessing"],
        "patch_size": patch,
        "store_fingerprint_hash": store.fingerprint_hash,
        "channels": store.channels[: spec.model.in_channels],
        "output": spec.model.output,
        "regions": ["wt", "tc", "et"],
        "job": spec.name,
    }
    return PreparedData(train_rows, val_rows, patch, extra)


def _mlflow_callback_cls():
    import ray.train  # Ray

    class MLflowCallback(ray.train.UserCallback):
        """Runs in the Train controller (pinned to the driver's node by Ray 2.60) and logs
        rank 0's reported metrics to MLflow, one step and one ``log_batch`` per epoch.

        With ``warm``, the process that unpickles it (the controller, while it starts and
        before it starts any worker) imports MLflow and opens the store there and then."""

        def __init__(self, run_id: str, uri: str, warm: bool = True) -> None:
            self.run_id = run_id
            self.uri = uri
            self.warm = warm
            self.nodes_tagged = False

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            if self.warm:
                try:
                    from bratslab.tracking import mlflow_runs

                    mlflow_runs.client(self.uri)  # import + schema check, cached per process
                except Exception as e:  # the first report retries and raises it properly
                    log.warning("MLflow store %s not ready at controller start: %s", self.uri, e)

        def after_report(self, run_context, metrics, checkpoint) -> None:
            from bratslab.tracking import mlflow_runs
            from bratslab.train.loop import NODE_IP_KEY

            tags = None
            if not self.nodes_tagged:  # once per attempt: where each rank runs, in rank order
                nodes = ",".join(f"{i}={w.get(NODE_IP_KEY, '?')}" for i, w in enumerate(metrics))
                tags = {WORKER_NODES_TAG: nodes}
                self.nodes_tagged = True
            m = metrics[0]
            keys = [k for k in m if k in LOGGED_EVERY_EPOCH or k.startswith("lr/")]
            if m.get("val/fresh"):
                keys += [k for k in LOGGED_ON_VALIDATION if k in m]
            values = {k: m[k] for k in keys}
            mlflow_runs.log_metrics(self.run_id, values, int(m["epoch"]), self.uri, tags=tags)

    return MLflowCallback


def _init_weights_ref(spec: JobSpec):
    """Fetch ``model.init_from`` on the driver and ship the state dict via the object store
    (workers on other nodes need neither MLflow access nor the driver's filesystem)."""
    if not spec.model.init_from:
        return None
    import ray  # Ray

    from bratslab.tracking.model_store import fetch_model_dir
    from bratslab.train.checkpoint import load_weights

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

    from bratslab.cluster import ensure_ray
    from bratslab.compat.ray_torch import NodeBoundTorchConfig
    from bratslab.train.failures import failure_config
    from bratslab.train.loop import train_loop_per_worker

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
            failure_config=failure_config(sc.max_failures),
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


def train_dataset(spec: JobSpec, data: PreparedData):
    """The ``train`` dataset Ray Train splits across the workers (``streaming_split``): the
    patch stream of :mod:`bratslab.data.patch_pipeline` (``data.loader: ray``; an actor pool
    samples them), or, for ``thread`` with :data:`CASE_TABLE_IN_CONFIG` off, the case table
    (each worker samples its own patches)."""
    from bratslab.data.loader import case_dataset

    if spec.data.loader == "thread":
        return case_dataset(data.train_rows)
    from bratslab.data.patch_pipeline import patch_dataset

    tr, sc = spec.training, spec.scaling
    _check_loader_cpus(spec)
    return patch_dataset(
        data.train_rows,
        spec.data,
        patch_size=data.patch_size,
        in_channels=spec.model.model_config_only().in_channels,
        seed=tr.seed,
        epochs=tr.epochs,
        steps_per_epoch=tr.steps_per_epoch,
        batch_size=tr.batch_size,
        num_workers=sc.num_workers,
    )


def _check_loader_cpus(spec: JobSpec) -> None:
    """Warn when the cluster has fewer CPUs than the workers and the loader actors together
    (an autoscaling cluster may still add them; a fixed one would wait forever)."""
    import ray  # Ray

    sc = spec.scaling
    need = sc.num_workers * (sc.cpus_per_worker + spec.data.loader_cpus)
    have = ray.cluster_resources().get("CPU", 0.0)  # Ray
    if have < need:
        log.warning(
            "data.loader ray: %d workers x (%g scaling.cpus_per_worker + %g data.loader_cpus) "
            "= %g CPUs, but the Ray cluster has %g; the patch actors may wait for CPUs",
            sc.num_workers,
            sc.cpus_per_worker,
            spec.data.loader_cpus,
            need,
            have,
        )


def _callbacks(
    spec: JobSpec, run_dir: Path, mlflow_run_id: str | None, extra: Sequence[Any], progress: bool
) -> list[Any]:
    """The controller's callbacks: fail-fast on permanent errors, MLflow logging, the console
    progress line, then ``extra``."""
    from bratslab.tracking.mlflow_runs import tracking_uri
    from bratslab.train.failures import fail_fast_callback
    from bratslab.train.progress import LOG_FILE, progress_callback

    out: list[Any] = [fail_fast_callback()]
    if mlflow_run_id:
        out.append(_mlflow_callback_cls()(mlflow_run_id, tracking_uri(), WARM_MLFLOW_IN_CONTROLLER))
    if progress:
        out.append(progress_callback(run_dir.name, spec.training.epochs, run_dir / LOG_FILE))
    return out + list(extra)


def _open_run(spec: JobSpec, name: str, run_dir: Path, parent_run_id: str | None, data) -> str:
    from bratslab.tracking import mlflow_runs

    state_file = run_dir / RUN_STATE
    previous = json.loads(state_file.read_text())["mlflow_run_id"] if state_file.is_file() else None
    tags = {
        mlflow_runs.TAG_JOB: spec.name,
        mlflow_runs.TAG_GIT: mlflow_runs.git_commit(Path(__file__).parent),
        mlflow_runs.TAG_STORE: data.model_extra["store_fingerprint_hash"],
        "bratslab.arch": spec.model.arch,
        **spec.tracking.tags,
    }
    params = _params(spec, data)
    run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params=params,
        tags=tags,
        parent_run_id=parent_run_id or spec.tracking.parent_run_id,
        resume_run_id=previous,
    )
    # The job this attempt runs (a resumed run keeps the params its first attempt logged):
    # what a later rerun of a FINISHED run is compared with (train/rerun.py).
    flat = mlflow_runs.flatten(params)
    write_json(state_file, {"mlflow_run_id": run_id, "job": spec.name, "params": flat})
    return run_id


def _params(spec: JobSpec, data: PreparedData) -> dict[str, Any]:
    """The MLflow params of a run of ``spec`` (nested; flattened to dotted keys when logged)."""
    return {**spec.resolved(), "resolved": {"patch_size": data.patch_size}}


def learning_curve(run_id: str, out_png: Path) -> Path:
    """Plot train/loss and val/dice_mean per epoch (from MLflow's history) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from bratslab.tracking.mlflow_runs import metric_history

    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss = metric_history(run_id, "train/loss")
    dice = metric_history(run_id, "val/dice_mean")
    # MLflow steps are 0-based epochs; the plot counts from 1, as the console does.
    if loss:
        ax1.plot([s + 1 for s, _ in loss], [v for _, v in loss], "o-", color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("train/loss", color="tab:blue")
    ax2 = ax1.twinx()
    if dice:
        ax2.plot([s + 1 for s, _ in dice], [v for _, v in dice], "s-", color="tab:red")
    ax2.set_ylabel("val/dice_mean", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _best(result) -> tuple[Any, dict[str, Any]]:
    """The best scored ``ray.train.Checkpoint`` (else the latest) and its metrics."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("ckpt_score", -1) >= 0]
    if scored:
        ckpt, metrics = max(scored, key=lambda cm: cm[1]["ckpt_score"])
        return ckpt, dict(metrics)
    if result.checkpoint is not None:
        return result.checkpoint, dict(result.metrics or {})
    return None, {}


def _local_copy(storage: RunStorage, run_dir: Path, checkpoint) -> Path | None:
    """A local folder holding ``checkpoint``: its own path on local storage; on ``s3://``,
    a copy downloaded into ``run_dir/checkpoints/<checkpoint name>`` (Ray's public
    ``Checkpoint.to_directory``)."""
    if checkpoint is None:
        return None
    if not storage.remote:
        return Path(checkpoint.path)
    dest = run_dir / CHECKPOINT_COPIES / Path(checkpoint.path).name
    return Path(checkpoint.to_directory(str(dest)))  # Ray


def _prune_copies(run_dir: Path, keep: set[Path | None]) -> None:
    copies = run_dir / CHECKPOINT_COPIES
    for folder in copies.iterdir() if copies.is_dir() else ():
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)


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
    from bratslab.cluster import ensure_ray, stop_driver
    from bratslab.names import check_name
    from bratslab.shutdown import Terminated, call_interruptibly, stop_on_signals
    from bratslab.train.rerun import finished_run, recorded_outcome

    name = check_name(name or spec.name, "run name")  # it becomes a folder under root
    storage = run_storage(storage_path)  # ConfigError for a bad URI, before anything is created
    spec.data.store_path()  # ConfigError naming the paths tried, before anything is created
    data = prepare_data(spec)
    run_dir = storage.run_dir(name)
    # A FINISHED run is never reopened: the same job again is its recorded outcome, another
    # job under its name is refused (ConfigError) before anything starts (train/rerun.py).
    finished = finished_run(run_dir / RUN_STATE, _params(spec, data), name)
    if finished is not None:
        return recorded_outcome(name, finished, storage)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.attach(run_dir)  # a quiet command's log file: bratslab.log beside the checkpoints
    run_id = _open_run(spec, name, run_dir, parent_run_id, data)
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
            outcome = _record(spec, name, run_id, storage, result)
        except Terminated as stop:
            # The run's status first: `ray job stop` sends SIGKILL 3 s after its SIGTERM
            # (RAY_JOB_STOP_WAIT_TIME_S), and an epoch the controller still registers
            # meanwhile is logged consistently with the checkpoint a rerun resumes from.
            _stopped(name, run_id, stop)
            stop_driver()
            raise
        except BaseException as e:
            from bratslab.train import failures

            failures.record(run_id, e, spec.scaling.max_failures)  # the cause, as a tag
            _failed(run_id, e)
            raise
    log.info("job %s finished: best %s (run %s)", name, outcome.best_checkpoint, run_id)
    return outcome


def _failed(run_id: str, error: BaseException) -> None:
    """Close the MLflow run of a job that raised: FAILED, the error as its stop reason."""
    from bratslab.shutdown import STOP_REASON_TAG
    from bratslab.tracking import mlflow_runs

    _log_console_log(run_id)
    reason = f"error: {type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: reason})
    finally:
        mlflow_runs.end_run(run_id, "FAILED")


def _log_console_log(run_id: str) -> None:
    """The command's log file (Ray's, MLflow's and the workers' output) on the MLflow run."""
    from bratslab.tracking import mlflow_runs

    path = console.log_file()
    if path is not None and path.is_file():
        try:
            mlflow_runs.log_artifact(run_id, path)
        except Exception as e:  # the run's own outcome matters more than its log's copy
            log.warning("could not log %s to MLflow run %s: %s", path, run_id, e)


def _stopped(name: str, run_id: str, stop) -> None:
    """Close the MLflow run of a job stopped by a signal: KILLED, with the signal as a tag."""
    from bratslab.shutdown import STOP_REASON_TAG
    from bratslab.tracking import mlflow_runs

    mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: stop.reason})
    mlflow_runs.end_run(run_id, "KILLED")
    log.warning(
        "job %s stopped by %s: MLflow run %s marked KILLED; rerun the same name to resume "
        "from its latest checkpoint",
        name,
        stop.reason,
        run_id,
    )


def outcome_of(name: str, run_id: str, storage: RunStorage, result) -> TrainOutcome:
    """What a Ray Train ``Result`` of the run ``name`` produced (local copies of the best and
    latest checkpoints on ``s3://`` storage); MLflow is not touched."""
    run_dir = storage.run_dir(name)
    best, best_metrics = _best(result)
    best_dir = _local_copy(storage, run_dir, best)
    latest = result.checkpoint
    same = latest is not None and best is not None and latest.path == best.path
    outcome = TrainOutcome(
        name=name,
        run_id=run_id,
        storage_dir=run_dir,
        best_checkpoint=best_dir,
        latest_checkpoint=best_dir if same else _local_copy(storage, run_dir, latest),
        metrics=dict(result.metrics or {}),
        best_metrics=best_metrics,
        best_checkpoint_uri=storage.uri(best.path) if best is not None else None,
    )
    if storage.remote:  # copies of an earlier run's checkpoints: only this run's two stay
        _prune_copies(run_dir, {outcome.best_checkpoint, outcome.latest_checkpoint})
    return outcome


def _record(spec: JobSpec, name: str, run_id: str, storage: RunStorage, result) -> TrainOutcome:
    """Log the job, the learning curve, the best scores and (optionally) the best checkpoint
    as a model to the MLflow run, then close it."""
    from bratslab.tracking import mlflow_runs, model_store

    outcome = outcome_of(name, run_id, storage, result)
    best_dir, best_metrics = outcome.best_checkpoint, outcome.best_metrics
    with tempfile.TemporaryDirectory(prefix="bratslab-run-") as tmp:
        job_file = Path(tmp) / "job.json"
        write_text(job_file, json.dumps(spec.resolved(), indent=2, sort_keys=True))
        mlflow_runs.log_artifact(run_id, job_file)
        mlflow_runs.log_artifact(run_id, learning_curve(run_id, Path(tmp) / "learning_curve.png"))
    _log_console_log(run_id)
    best_keys = (*LOGGED_ON_VALIDATION[:4], "val/lesion_dice_mean")
    summary = {"best/" + k: v for k, v in best_metrics.items() if k in best_keys}
    if summary:
        mlflow_runs.log_metrics(run_id, summary, int(best_metrics.get("epoch", 0)))
    if spec.tracking.log_model and best_dir is not None:
        outcome.model_uri = model_store.log_model_dir(best_dir, run_id=run_id)
        tags = {
            "bratslab.model_uri": outcome.model_uri,
            "bratslab.best_checkpoint": str(outcome.best_checkpoint_uri),
        }
        mlflow_runs.set_tags(run_id, tags)
    mlflow_runs.end_run(run_id, "FINISHED")
    return outcome
