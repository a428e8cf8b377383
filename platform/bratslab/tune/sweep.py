"""Sweeps: Ray Tune ``Tuner`` + ``OptunaSearch`` + ASHA, each trial a Ray Train run.

:func:`start_sweep` starts a sweep of a job; :func:`resume_sweep` continues one by name. Both
validate once, before anything is created or started, then share :func:`_run`.

Layout of a sweep folder (``$BRATSLAB_HOME/sweeps/<name>/``)::

    sweep.json        the resolved base job, the MLflow parent run id, where the Optuna study
                      lives (password hidden), the outcome when finished
    space.yaml        the space file as it was when the sweep started (a resume uses this copy)
    optuna.db         the Optuna study (SQLite; one writer: the Tune driver), unless
                      BRATSLAB_OPTUNA_STORAGE names a shared database (bratslab.tune.optuna_storage)
    tune/             Ray Tune's experiment state (trials, searcher and scheduler snapshots)
    train/            each trial's Ray Train run (checkpoints), named <sweep>-<trial id>
    trials/<id>.json  a completed trial's outcome, written atomically when its training ends
    results.csv       the results table (also an artifact of the parent run)

With ``BRATSLAB_RAY_STORAGE=s3://bucket/prefix``, ``tune/``, ``train/`` and ``trials/`` are in
the bucket under ``prefix/sweeps/<name>/`` instead, and the rest stays in the folder; the
manifest records that location (``ray_storage``) and a resume reads the experiment from there
(:mod:`bratslab.tune.experiment_storage` says what lives where).

Resume guarantee (``--resume NAME``): ``Tuner.restore`` brings back the trials, the searcher
(whose Optuna study, named after the sweep, lives in ``optuna.db`` or in the database the sweep
started with) and the scheduler from Tune's last experiment snapshot. Tune takes that snapshot
periodically, not at every trial completion, so a trial that finished just before an
interruption may come back as unfinished; its ``trials/<id>.json`` marker then makes the trial
function replay the recorded result instead of training again. A trial interrupted mid-training
restarts under the same Train run name and so continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bratslab import atomic
from bratslab.config import ConfigError, validate
from bratslab.names import check_name
from bratslab.settings import Settings, get_settings
from bratslab.tune.experiment_storage import sweep_storage_uri
from bratslab.tune.optuna_storage import check_new_study, manifest_entry, storage_for_resume
from bratslab.tune.space import SearchSpace
from bratslab.tune.sweep_paths import TUNE_DIRNAME, SweepPaths, sweeps_root
from bratslab.tune.sweep_run import SweepOutcome, run_sweep
from bratslab.tune.trial import TrialContext
from bratslab.tune.trial_result import TrialResult

if TYPE_CHECKING:  # the spec is injected: tune/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)


__all__ = [
    "SweepOutcome",
    "SweepPaths",
    "TrialContext",
    "TrialResult",
    "resume_sweep",
    "start_sweep",
    "validate_sweep",
]


def start_sweep(
    spec, *, job_source: str | None = None, settings: Settings | None = None
) -> SweepOutcome:
    """Start a new sweep of ``spec`` and run it end to end.

    Steps: validate the space against the job (every parameter and candidate value, before any
    folder, run or trial exists) → MLflow parent run → Tune (OptunaSearch + ASHA, one Ray Train
    run per trial) → results table and Optuna plots on the parent run → top-k TTA
    re-evaluation → register the winner and move the alias if it beats the champion.

    Args:
        spec: the validated ``JobSpec``, with a ``sweep`` section.
        job_source: path of the job file (a relative space path may be beside it).
    Raises:
        ConfigError: no sweep section, a sweep of that name exists, a space that does not
            fit the job, or no store where ``data.store`` points.
    """
    source = job_source or "job"
    if spec is None or spec.sweep is None:
        raise ConfigError(f"{source}: no `sweep` section")
    settings = _pin_stores(settings)
    name = spec.sweep.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    ray_storage = sweep_storage_uri(settings.ray_storage, name)  # ConfigError: a bad URI
    paths = SweepPaths(sweeps_root(settings) / name, settings.optuna_storage, ray_storage)
    if paths.manifest.is_file():
        raise ConfigError(
            f"sweep {name!r} exists in {paths.root}; continue it with --resume {name}"
        )
    if paths.experiment.remote and paths.experiment.has_experiment(TUNE_DIRNAME):
        # Another work folder's sweep of this name: Tune would mix both experiments.
        raise ConfigError(
            f"{source}: {ray_storage} already holds a Tune experiment; give the sweep another "
            f"sweep.name (resume an interrupted sweep with --resume {name} from its work folder)"
        )
    space_path = _resolve_space_path(spec.sweep.space, job_source)
    space = SearchSpace.from_file(space_path)
    validate_sweep(spec, space, source)
    if paths.optuna_storage:  # a shared database: the study name must be new there
        check_new_study(paths.optuna_storage, name, source)
    try:  # every trial would fail on a missing store: said before anything starts
        spec.data.store_path()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    manifest = _create_sweep_folder(paths, name, spec, space_path)
    return run_sweep(spec, space, paths, manifest, settings, restore=False)


def resume_sweep(
    name: str, *, job_type: type[JobSpec], settings: Settings | None = None
) -> SweepOutcome:
    """Continue the sweep ``name`` with the job and space stored in its folder; ``job_type``
    (the job spec class) validates the stored job.

    Completed trials are kept, unfinished ones continue from their latest checkpoint (see the
    module docstring), then the sweep finishes as :func:`start_sweep` does.

    Raises:
        ConfigError: no sweep of that name, the sweep already finished, or its stored space no
            longer fits its job.
    """
    settings = _pin_stores(settings)
    paths, manifest = _load_sweep(check_name(name, "sweep name"), settings)
    if manifest.get("finished"):
        raise ConfigError(
            f"sweep {name!r} already finished ({manifest['finished']}); "
            "start a new sweep to search again"
        )
    optuna_storage = storage_for_resume(manifest, settings, str(paths.manifest))
    paths = SweepPaths(paths.root, optuna_storage, _ray_storage_for_resume(manifest, settings))
    spec = validate(job_type, manifest["job"], str(paths.manifest))
    space = SearchSpace.from_file(paths.root / "space.yaml")
    space.source = manifest["space_file"]
    validate_sweep(spec, space, str(paths.manifest))
    # A sweep interrupted before Tune wrote any state starts its Tune experiment afresh.
    restore = paths.experiment.has_experiment(TUNE_DIRNAME)
    return run_sweep(spec, space, paths, manifest, settings, restore=restore)


def validate_sweep(spec, space: SearchSpace, source: str) -> None:
    """Every check a sweep makes before it creates anything, run once per start or resume.

    Raises:
        ConfigError: a parameter (or the fixed values) does not fit the job, or ASHA's
            grace period exceeds its ``max_t``.
    """
    space.check_against(type(spec), spec.resolved(), source=source)
    sched = spec.sweep.scheduler
    max_t = sched.max_t or spec.training.epochs
    if sched.kind == "asha" and sched.grace_period > max_t:
        raise ConfigError(
            f"{source}: sweep.scheduler.grace_period ({sched.grace_period}) "
            f"exceeds max_t ({max_t}, default training.epochs)"
        )


def _pin_stores(settings: Settings | None) -> Settings:
    """Pin the stores for this process and the trial actors (``ensure_ray`` forwards these two
    variables): every MLflow client, fluent call and Ray worker then resolves the same store."""
    settings = settings or get_settings()
    os.environ.setdefault("BRATSLAB_HOME", str(settings.home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return settings


def _resolve_space_path(space: str, job_source: str | None) -> Path:
    """The space file as given (absolute or relative to the cwd), else relative to the job
    file's folder or its parent (``jobs/x.yaml`` → ``search_spaces/...`` of the same tree)."""
    p = Path(space).expanduser()
    if p.is_file() or p.is_absolute() or not job_source:
        return p
    job_dir = Path(job_source).parent
    for candidate in (job_dir / p, job_dir.parent / p):
        if candidate.is_file():
            return candidate
    return p


def _create_sweep_folder(paths: SweepPaths, name: str, spec, space_path: Path) -> dict:
    """The sweep folder with its copy of the space file; returns the (unwritten) manifest."""
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(paths.root / "space.yaml", space_path.read_text())
    return {
        "format": "bratslab-sweep/1",
        "name": name,
        "job": spec.resolved(),
        "space_file": str(space_path),
        "optuna": manifest_entry(paths.optuna_storage, name),
        "ray_storage": paths.ray_storage,  # None: tune/, train/, trials/ are in the folder
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent_run_id": None,
    }


def _ray_storage_for_resume(manifest: dict, settings: Settings) -> str | None:
    """Where the sweep's experiment is: the location it started with (recorded in the
    manifest, no secrets), whatever ``BRATSLAB_RAY_STORAGE`` says now; a difference is logged."""
    recorded = manifest.get("ray_storage")
    now = sweep_storage_uri(settings.ray_storage, manifest["name"])
    if now != recorded:
        log.warning(
            "sweep %s: its Tune experiment and checkpoints are in %s (where it started); "
            "BRATSLAB_RAY_STORAGE=%s is not used for it",
            manifest["name"],
            recorded or "its folder",
            settings.ray_storage or "(unset)",
        )
    return recorded


def _load_sweep(name: str, settings: Settings) -> tuple[SweepPaths, dict]:
    paths = SweepPaths(sweeps_root(settings) / name)
    if not paths.manifest.is_file():
        known = sorted(p.parent.name for p in sweeps_root(settings).glob("*/sweep.json"))
        raise ConfigError(
            f"no sweep named {name!r} under {sweeps_root(settings)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return paths, json.loads(paths.manifest.read_text())
