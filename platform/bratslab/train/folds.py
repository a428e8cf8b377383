"""Cross-validation: one Ray Train run per fold of the store, under one parent MLflow run.

``bratslab train JOB --folds all`` (or ``--folds 0,2,4``) trains fold ``k`` as the ordinary job
with ``data.fold = k`` (:func:`bratslab.train.trainer.run_training`, run name
``<name>-fold<k>``), nested under a parent MLflow run ``<name>`` of kind ``cv`` whose tag
``bratslab.cv.folds`` lists the folds. The store's ``dataset.json`` defines the folds (train and
val case ids per fold), as nnU-Net's 5-fold cross-validation does.

On the parent, per fold ``cv/fold<k>/val/dice_mean``, ``cv/fold<k>/val/lesion_dice_mean`` and
the per-region values (``val/dice_wt``, ``val/lesion_dice_et``, ...) of the fold's *selected*
checkpoint (the epoch its ``best/`` metrics name), then ``cv/mean/...`` and ``cv/std/...``
(sample standard deviation, n-1) across folds once every selected fold has finished. These are
validation scores of the checkpoint chosen on those same cases, so slightly optimistic; an
ensemble of the folds is judged honestly on a separate store
(:mod:`bratslab.inference.ensemble_comparison`).

Concurrency: ``max_parallel`` folds at once share the Ray cluster, each from a driver thread.
The default is 1 (sequential): one fold's workers already fill a small machine's cores (2
workers x 1 CPU in ``jobs/smoke.yaml`` on 2 cores), so two at once only interleave them with
twice the memory, and a stop or failure then costs at most one unfinished fold. On a cluster
with room for several folds' workers, raise it.

Failures and resuming: a failed fold marks the parent FAILED after the other folds have run
(their runs stay recorded); rerunning the same command resumes the parent run and the
unfinished folds (``run_training`` resumes a name from its latest checkpoint). A fold whose run
is already FINISHED is not passed to ``run_training`` again: rerunning a finished name there
would reopen its MLflow run, start a worker group that trains no epoch (the loop starts at
the last saved epoch + 1) and log its model a second time; here its recorded metrics are read
instead. SIGTERM/SIGINT mark the parent (and a running fold) KILLED with
``bratslab.stop_reason``, as ``run_training`` does for a single run.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab.atomic import write_json
from bratslab.cluster import ensure_ray, stop_driver
from bratslab.config import ConfigError
from bratslab.data.store import Store
from bratslab.names import check_name
from bratslab.settings import get_settings
from bratslab.shutdown import POLL_S, STOP_REASON_TAG, Terminated, stop_on_signals
from bratslab.tracking import mlflow_runs, registry
from bratslab.tracking.mlflow_runs import metric_history, run_info
from bratslab.train.run_storage import RUN_STATE
from bratslab.train.trainer import run_training

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)

CV_STATE = "bratslab_cv.json"  # in ray_results/<name>-cv/: the parent MLflow run of a CV job
VAL_KEYS = (
    "val/dice_wt",
    "val/dice_tc",
    "val/dice_et",
    "val/dice_mean",
    "val/lesion_dice_wt",
    "val/lesion_dice_tc",
    "val/lesion_dice_et",
    "val/lesion_dice_mean",
)
KILL_GRACE_S = 5.0  # after a stop: how long fold threads may take to notice Ray is gone


class FoldsFailed(RuntimeError):
    """Some folds failed; the others finished and are recorded on the parent run."""

    def __init__(self, outcome: CVOutcome):
        failed = [r for r in outcome.results if r.status == "failed"]
        super().__init__(
            "; ".join(f"fold {r.fold} ({r.name}) failed: {r.error}" for r in failed)
            + f" (parent run {outcome.parent_run_id} FAILED; rerun the same command to retry)"
        )
        self.outcome = outcome


@dataclass
class FoldResult:
    """One fold: its run, whether it was trained now, found finished, or failed, and its
    validation metrics at the selected checkpoint (:data:`VAL_KEYS`)."""

    fold: int
    name: str
    run_id: str | None
    status: str  # "trained", "finished-before", "failed"
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class CVOutcome:
    name: str
    parent_run_id: str
    results: list[FoldResult]
    summary: dict[str, float]


def parse_folds(text: str, num_folds: int, where: str = "--folds") -> list[int]:
    """``"all"`` → every fold of the store; ``"0,2,4"`` → those folds (sorted, each once).

    Raises:
        ConfigError: not ``all`` nor comma-separated integers, a fold out of range
            ``0..num_folds-1``, or a fold named twice.
    """
    text = text.strip()
    if text == "all":
        return list(range(num_folds))
    parts = [p.strip() for p in text.split(",")]
    if not text or not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"{where} {text!r}: expected 'all' or fold numbers separated by commas, e.g. 0,2,4"
        )
    folds = [int(p) for p in parts]
    bad = [k for k in folds if k >= num_folds]
    if bad:
        raise ConfigError(
            f"{where} {text!r}: fold(s) {bad} out of range; the store has {num_folds} folds "
            f"(0..{num_folds - 1})"
        )
    if len(set(folds)) != len(folds):
        raise ConfigError(f"{where} {text!r}: a fold is named twice")
    return sorted(folds)


def fold_spec(spec: JobSpec, fold: int) -> JobSpec:
    """``spec`` with ``data.fold = fold``."""
    return spec.model_copy(update={"data": spec.data.model_copy(update={"fold": fold})})


def fold_name(name: str, fold: int) -> str:
    return f"{name}-fold{fold}"


def fold_metrics(run_id: str) -> dict[str, float]:
    """:data:`VAL_KEYS` of a fold run at its selected epoch (the step of its ``best/``
    metrics); the latest values when it logged no ``best/`` summary."""
    best = metric_history(run_id, "best/val/dice_mean")
    if not best:
        latest = run_info(run_id)["metrics"]
        return {k: float(latest[k]) for k in VAL_KEYS if k in latest}
    epoch = best[-1][0]
    out = {}
    for key in VAL_KEYS:
        at = [v for step, v in metric_history(run_id, key) if step == epoch]
        if at:
            out[key] = float(at[-1])
    return out


def summarize(results: list[FoldResult]) -> dict[str, float]:
    """The parent's metrics: ``cv/fold<k>/<key>`` per fold, and ``cv/mean/<key>``,
    ``cv/std/<key>`` (n-1; 0 for one fold) when every fold has a value for ``key``."""
    import numpy as np

    out: dict[str, float] = {}
    for r in results:
        out.update({f"cv/fold{r.fold}/{k}": v for k, v in r.metrics.items()})
    if any(r.status == "failed" for r in results):
        return out
    for key in VAL_KEYS:
        values = [r.metrics[key] for r in results if key in r.metrics]
        if len(values) == len(results) and values:
            out[f"cv/mean/{key}"] = float(np.mean(values))
            out[f"cv/std/{key}"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out["cv/folds"] = float(len(results))
    return out


def run_cv(
    spec: JobSpec,
    folds: list[int],
    *,
    name: str | None = None,
    max_parallel: int = 1,
    storage_path: str | Path | None = None,
    progress: bool = True,
    train_fn: Callable[..., Any] | None = None,
) -> CVOutcome:
    """Train ``folds`` of ``spec`` under one parent MLflow run; see the module docstring.

    Args:
        name: parent run name (default ``spec.name``); folds are ``<name>-fold<k>``.
        max_parallel: folds trained at once (driver threads); 1 runs them one after another
            in the calling thread.
        storage_path: Ray results root; default: ``BRATSLAB_RAY_STORAGE``, else
            ``$BRATSLAB_HOME/ray_results`` (bratslab's own per-run files stay local).
        train_fn: the per-fold trainer, ``run_training``'s signature (tests substitute one).

    Raises:
        FoldsFailed: at least one fold failed (the parent is FAILED; the others recorded).
        Terminated: SIGTERM/SIGINT; the parent is KILLED with ``bratslab.stop_reason``.
    """
    if max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel}: must be at least 1")
    name = check_name(name or spec.name, "run name")
    check_name(fold_name(name, max(folds)), "fold run name")
    # bratslab's own files (bratslab_cv.json, each fold's bratslab_run.json) stay local; Ray's
    # results go to ``storage_path`` or, unset, wherever run_training puts them
    # (BRATSLAB_RAY_STORAGE, e.g. s3://, else this same local folder).
    local = storage_path is not None and "://" not in str(storage_path)
    root = Path(storage_path) if local else get_settings().home / "ray_results"
    parent = _open_parent(spec, name, folds, root)
    train = train_fn or run_training

    def one(k: int) -> FoldResult:
        return _train_fold(train, spec, name, k, parent, root, progress, storage_path)

    if train_fn is None:
        ensure_ray()  # before the handlers (ray.init installs its own), once for all threads
    with stop_on_signals():
        try:
            if max_parallel == 1:
                results = [one(k) for k in folds]
            else:
                results = _in_threads(one, folds, max_parallel)
        except Terminated as stop:
            _stopped(parent, stop, threaded=max_parallel > 1)
            raise
        except BaseException:
            mlflow_runs.end_run(parent, "FAILED")
            raise
    outcome = CVOutcome(name, parent, results, summarize(results))
    mlflow_runs.log_metrics(parent, outcome.summary, 0)
    failed = any(r.status == "failed" for r in results)
    mlflow_runs.end_run(parent, "FAILED" if failed else "FINISHED")
    if failed:
        raise FoldsFailed(outcome)
    return outcome


def _open_parent(spec: JobSpec, name: str, folds: list[int], root: Path) -> str:
    """Create (or, for a rerun of ``name``, reopen) the parent run; its id is kept in
    ``<root>/<name>-cv/bratslab_cv.json``."""
    state = root / f"{name}-cv" / CV_STATE
    previous = json.loads(state.read_text())["mlflow_run_id"] if state.is_file() else None
    store = Store(spec.data.store_path())
    tags = {
        registry.KIND_TAG: "cv",
        registry.CV_FOLDS_TAG: ",".join(map(str, folds)),
        "bratslab.cv.num_folds": str(store.num_folds),
        mlflow_runs.TAG_JOB: spec.name,
        mlflow_runs.TAG_STORE: store.fingerprint_hash,
        mlflow_runs.TAG_GIT: mlflow_runs.git_commit(Path(__file__).parent),
        **spec.tracking.tags,
    }
    params = spec.resolved()
    params["data"] = {**params["data"], "fold": tags[registry.CV_FOLDS_TAG]}
    run_id = mlflow_runs.start_run(
        experiment=spec.tracking.experiment,
        run_name=name,
        params=params,
        tags=tags,
        parent_run_id=spec.tracking.parent_run_id,
        resume_run_id=previous,
    )
    mlflow_runs.set_tags(run_id, tags)  # a rerun may select other folds
    state.parent.mkdir(parents=True, exist_ok=True)
    write_json(state, {"mlflow_run_id": run_id, "job": spec.name})
    return run_id


def _finished_run(run_dir: Path) -> str | None:
    """The MLflow run id of a fold folder whose run is FINISHED, else None."""
    state = run_dir / RUN_STATE
    if not state.is_file():
        return None
    run_id = json.loads(state.read_text()).get("mlflow_run_id")
    try:
        return run_id if run_id and run_info(run_id)["status"] == "FINISHED" else None
    except Exception:  # the run was deleted from MLflow: train the fold again
        return None


def _train_fold(
    train: Callable[..., Any],
    spec: JobSpec,
    name: str,
    k: int,
    parent: str,
    root: Path,
    progress: bool,
    storage_path: str | Path | None = None,
) -> FoldResult:
    """Train fold ``k`` (or adopt its finished run) and read its metrics; a failure is
    returned, not raised (:class:`~bratslab.shutdown.Terminated` is raised)."""
    fname = fold_name(name, k)
    done = _finished_run(root / fname)
    if done is not None:
        log.info("fold %d: run %s (%s) already finished; not retrained", k, fname, done)
        mlflow_runs.set_tags(done, {mlflow_runs.TAG_PARENT: parent})
        return FoldResult(k, fname, done, "finished-before", fold_metrics(done))
    try:
        out = train(
            fold_spec(spec, k),
            name=fname,
            parent_run_id=parent,
            storage_path=storage_path,
            progress=progress,
        )
    except Exception as e:  # the run itself is FAILED (run_training); the others go on
        log.exception("fold %d (%s) failed", k, fname)
        return FoldResult(k, fname, None, "failed", error=f"{type(e).__name__}: {e}")
    return FoldResult(k, fname, out.run_id, "trained", fold_metrics(out.run_id))


def _in_threads(
    one: Callable[[int], FoldResult], folds: list[int], max_parallel: int
) -> list[FoldResult]:
    """``one(k)`` for every fold, at most ``max_parallel`` at a time, each in a daemon thread
    (a stopped driver must not wait for them), while this thread waits in short,
    signal-interruptible steps."""
    pending = list(folds)
    running: dict[int, tuple[threading.Thread, dict[str, Any]]] = {}
    results: dict[int, FoldResult] = {}

    def target(k: int, box: dict[str, Any]) -> None:
        try:
            box["result"] = one(k)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e

    while pending or running:
        while pending and len(running) < max_parallel:
            k = pending.pop(0)
            box: dict[str, Any] = {}
            thread = threading.Thread(target=target, args=(k, box), name=f"fold-{k}", daemon=True)
            running[k] = (thread, box)
            thread.start()
        time.sleep(POLL_S)
        for k, (thread, box) in list(running.items()):
            if not thread.is_alive():
                del running[k]
                if "error" in box:
                    raise box["error"]
                results[k] = box["result"]
    return [results[k] for k in folds]


def _stopped(parent: str, stop, *, threaded: bool) -> None:
    """A signal stopped the CV job: the parent first (``ray job stop`` sends SIGKILL 3 s
    later), then folds still RUNNING (trained in threads, which install no handlers), then
    Ray; folds whose threads marked their run FAILED as Ray went away are set back to KILLED."""
    mlflow_runs.set_tags(parent, {STOP_REASON_TAG: stop.reason})
    mlflow_runs.end_run(parent, "KILLED")
    children = mlflow_runs.running_children(parent) if threaded else []

    def kill_children() -> None:
        for run_id in children:
            mlflow_runs.set_tags(run_id, {STOP_REASON_TAG: stop.reason})
            mlflow_runs.end_run(run_id, "KILLED")

    kill_children()
    stop_driver()
    if children:
        deadline = time.monotonic() + KILL_GRACE_S
        for t in threading.enumerate():
            if t.name.startswith("fold-"):
                t.join(max(0.0, deadline - time.monotonic()))
        kill_children()
    log.warning(
        "cross-validation stopped by %s: parent run %s KILLED; rerun the same command to "
        "resume (finished folds are kept)",
        stop.reason,
        parent,
    )


def fold_table(outcome: CVOutcome) -> list[dict[str, Any]]:
    """Rows for printing: fold, run, status, voxel and lesion-wise Dice means."""
    rows = []
    for r in outcome.results:
        rows.append(
            {
                "fold": r.fold,
                "run": r.name,
                "status": r.status,
                "dice_mean": r.metrics.get("val/dice_mean", math.nan),
                "lesion_dice_mean": r.metrics.get("val/lesion_dice_mean", math.nan),
            }
        )
    return rows
