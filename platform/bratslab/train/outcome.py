"""What a finished training job produced: the best and latest checkpoints, as local folders."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bratslab.train.run_storage import RunStorage

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    pass

log = logging.getLogger(__name__)


CHECKPOINT_COPIES = "checkpoints"  # in the run folder: local copies of s3:// checkpoints


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
