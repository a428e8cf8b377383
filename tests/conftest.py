"""Shared fixtures: one work directory, one local Ray instance and one MLflow store per session.

Ray start-up costs seconds, so every integration test shares a single local instance bound to
127.0.0.1 (started lazily by the first test that asks for ``ray_cluster``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Keep test processes from oversubscribing the cores with intra-op threads: `make test` runs two
# pytest-xdist workers side by side, so each (and the Ray workers it starts) gets one thread;
# waiting OpenMP threads spin, and two 2-thread pools on 2 cores burn CPU doing nothing.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")


PINNED = ("BRATSLAB_HOME", "MLFLOW_TRACKING_URI", "BRATSLAB_ARTIFACTS", "BRATSLAB_RAY_CPUS")


@pytest.fixture(autouse=True)
def _restore_pinned_settings():
    """The CLI exports its resolved settings (``settings.pin_settings``); a command run in-process
    by a test must not change where the next test's MLflow store is."""
    saved = {k: os.environ.get(k) for k in PINNED}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def bratslab_home(tmp_path_factory) -> Path:
    """A session-wide ``$BRATSLAB_HOME`` with the embedded MLflow store inside it."""
    home = tmp_path_factory.mktemp("bratslab-home")
    os.environ["BRATSLAB_HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    return home


@pytest.fixture(scope="session")
def ray_cluster(bratslab_home):
    """A local Ray instance (6 logical CPUs, loopback only) shared by the whole session."""
    import ray

    from bratslab.cluster import ensure_ray

    ensure_ray(num_cpus=6, object_store_memory=1 << 30)
    yield ray
    ray.shutdown()


def shared_product(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session, whichever pytest-xdist worker asks first; the
    others wait for it (a file lock) and reuse the folder. Only for products that tests read
    and never change. Without xdist, a folder of this session's temporary directory."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above every worker's own
    folder, built = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not built.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A real store (data.synth → data preprocess, in-process): 8 cases of ≈32³ voxels, built
    once per session and shared by every worker (tests only read it)."""

    def build(root: Path) -> None:
        from bratslab.data.config import PreprocessConfig
        from bratslab.data.preprocess_tasks import run_preprocess
        from bratslab.data.synth import synthesize_dataset

        synthesize_dataset(root / "raw", 8, shape=(48, 48, 40), seed=0)
        cfg = PreprocessConfig(min_size=[32, 32, 32], num_folds=4)
        run_preprocess(root / "raw", root / "store", cfg, use_ray=False, progress=False)

    return shared_product(tmp_path_factory, "train-store", build) / "store"


@pytest.fixture(scope="session", autouse=True)
def _migrated_sqlite_stores(tmp_path_factory):
    """A brand-new embedded MLflow store (``sqlite:`` at a path where no database is yet) starts
    as a copy of one migrated once per session, instead of running MLflow's alembic migrations
    again: seconds per store, and the unit tests open a fresh store per test. The copy is a real
    MLflow database made by the same code (``mlflow_runs.ensure_schema``), which still opens and
    checks every store; subprocesses (every CLI journey, the concurrent-creation test) create
    theirs from scratch."""
    try:
        from bratslab.tracking import mlflow_runs
    except ImportError:  # the module moved: no shortcut, stores are created as usual
        yield
        return

    def build(folder: Path) -> None:
        mlflow_runs.ensure_schema(f"sqlite:///{folder / 'mlflow.db'}")

    template = shared_product(tmp_path_factory, "mlflow-migrated", build) / "mlflow.db"
    create = mlflow_runs.ensure_schema

    def ensure_schema(uri: str) -> None:
        db = mlflow_runs.sqlite_path(uri)
        if db is not None and not db.exists():
            db.parent.mkdir(parents=True, exist_ok=True)
            # per process and thread: trainings run from driver threads open stores at once
            part = db.with_name(f"{db.name}.{os.getpid()}.{threading.get_ident()}.part")
            shutil.copyfile(template, part)
            try:
                os.link(part, db)  # never over a database another process made meanwhile
            except FileExistsError:
                pass
            finally:
                part.unlink()
        create(uri)

    patch = pytest.MonkeyPatch()
    patch.setattr(mlflow_runs, "ensure_schema", ensure_schema)
    yield
    patch.undo()


# The slowest files, slowest first (measured with --durations on 2 cores). `make test` runs files
# on pytest-xdist workers with --no-loadscope-reorder: a worker takes the next file as it frees
# up, so starting with the long ones keeps a 3-minute file from running alone at the end. The
# slow unit files (Ray, spawned processes, many inference passes) follow the integration ones.
SLOW_FIRST = (
    "test_readme_journey.py",
    "test_postgres.py",
    "test_sweep_kill.py",
    "test_demo.py",
    "test_train_ray.py",
    "test_s3_checkpoints.py",
    "test_jobs_cluster.py",
    "test_two_nodes.py",
    "test_todays_data.py",
    "test_cv_ensemble.py",
    "test_registry_server.py",
    "test_preprocess_ray.py",
    "test_predict_evaluate.py",
    "test_postprocess_registry.py",
    "test_registry_races.py",
    "test_evaluate_cli.py",
    "test_sqlite_schema_lock.py",
    "test_sliding_window.py",
    "test_optim_paths.py",
    "test_driver_gone.py",
)


def pytest_collection_modifyitems(config, items):
    """Run the slowest files first (a stable sort: the order within a file is kept)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
