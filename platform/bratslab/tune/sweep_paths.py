"""Where one sweep keeps its state: the folder layout of :mod:`bratslab.tune.sweep`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bratslab.settings import Settings, get_settings
from bratslab.tune.experiment_storage import ExperimentStorage
from bratslab.tune.optuna_storage import sqlite_beside

TUNE_DIRNAME = "tune"


@dataclass(frozen=True)
class SweepPaths:
    """Where one sweep keeps its state.

    Attributes:
        root: the sweep folder.
        optuna_storage: SQLAlchemy URL of the Optuna study storage (``BRATSLAB_OPTUNA_STORAGE``,
            see :mod:`bratslab.tune.optuna_storage`); None keeps the study in ``optuna.db`` in
            ``root``.
        ray_storage: ``s3://bucket/prefix/sweeps/<name>`` when the Tune experiment, trial
            checkpoints and markers live in a bucket (:mod:`bratslab.tune.experiment_storage`);
            None keeps them in ``root``.
    """

    root: Path
    optuna_storage: str | None = None
    ray_storage: str | None = None

    @property
    def experiment(self) -> ExperimentStorage:
        """Where the Tune experiment, the trials' checkpoints and their markers live."""
        return ExperimentStorage(self.root, self.ray_storage)

    @property
    def manifest(self) -> Path:
        return self.root / "sweep.json"

    @property
    def tune(self) -> Path:
        return self.root / TUNE_DIRNAME

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def optuna_url(self) -> str:
        """The storage URL of the sweep's Optuna study (its study name is the sweep's)."""
        return self.optuna_storage or sqlite_beside(self.root)

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    def marker(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.json"

    def attempts(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.attempts.jsonl"


def sweeps_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).home / "sweeps"
