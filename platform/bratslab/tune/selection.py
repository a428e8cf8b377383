"""After the search: re-evaluate the top-k trials with TTA, register the winner, move the alias.

Validation Dice during training is measured without test-time augmentation on a few cases, so
the sweep ranks its trials by it only to pick ``top_k`` candidates; each candidate's best
checkpoint is then evaluated on the whole validation fold with flip TTA
(:func:`bratslab.evaluate.model_eval.evaluate_model`), and the best of those becomes a new
registered version. The ``champion`` alias moves to it only if it beats the current champion
on the selection metric (:func:`bratslab.tracking.registry.promote_if_better`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def tta_metrics(result: Mapping[str, Any], prefix: str = "tta/") -> dict[str, float]:
    """Numeric entries of an evaluation result as ``tta/<key>`` (nested dicts joined by ``/``).

    Per-case tables (lists) are left out: the registry tags and the results table hold
    summaries only.
    """
    out: dict[str, float] = {}

    def walk(d: Mapping[str, Any], path: str) -> None:
        for k, v in d.items():
            key = f"{path}{k}"
            if isinstance(v, Mapping):
                walk(v, key + "/")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key if key.startswith(prefix) else prefix + key] = float(v)

    walk(result, "")
    return out


def rank_candidates(rows: list[dict[str, Any]], mode: str, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` trials with a checkpoint, best ``best_metric`` first."""
    scored = [
        r
        for r in rows
        if r.get("best_checkpoint")
        and r.get("best_metric") is not None
        and math.isfinite(r["best_metric"])
    ]
    scored.sort(key=lambda r: r["best_metric"], reverse=(mode == "max"))
    return scored[:top_k]


def pick_winner(candidates: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The candidate with the best finite ``tta[metric]`` (ties: the better-ranked one)."""
    best, best_value = None, None
    for c in candidates:
        v = (c.get("tta") or {}).get(metric)
        if v is None or not math.isfinite(v):
            continue
        if best_value is None or (v > best_value if mode == "max" else v < best_value):
            best, best_value = c, v
    return best


def default_registry_name(store_path: str) -> str:
    """``bratslab-<dataset>``, the dataset named by the store folder (MLflow-safe characters)."""
    from pathlib import Path

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(store_path).name).strip("-") or "dataset"
    return f"bratslab-{stem}"


@dataclass
class Registration:
    """The winner as registered."""

    name: str
    version: str
    model_uri: str
    promoted: bool
    alias: str
    trial_id: str


def evaluate_candidates(
    candidates: list[dict[str, Any]], store: str, fold: int, tta: str
) -> list[dict[str, Any]]:
    """Add ``tta`` (a dict of ``tta/*`` metrics) to each candidate row, in place."""
    from bratslab.evaluate.model_eval import evaluate_model

    for c in candidates:
        log.info("TTA re-evaluation of trial %s (%s)", c["trial_id"], c["best_checkpoint"])
        run_id = c.get("mlflow_run_id")
        # evaluate_model also logs the tta/* metrics to the trial's own MLflow run.
        result = evaluate_model(
            c["best_checkpoint"], store, fold, tta, run_id=run_id, log_to_mlflow=bool(run_id)
        )
        c["tta"] = tta_metrics(result)
    return candidates


def register_winner(
    winner: dict[str, Any],
    *,
    name: str,
    sweep_name: str,
    metric: str,
    mode: str,
    alias: str,
) -> Registration:
    """Log the winner's checkpoint as an MLflow model in its trial run, register, promote.

    Tags of the version: every ``tta/*`` metric, the sweep and trial ids, and each sampled
    parameter as ``param.<dotted key>``.
    """
    from bratslab.tracking import mlflow_runs, model_store, registry

    run_id = winner.get("mlflow_run_id")
    if not run_id:
        raise RuntimeError(f"trial {winner['trial_id']}: no MLflow run to log the model in")
    model_uri = model_store.log_model_dir(winner["best_checkpoint"], run_id=run_id)
    mlflow_runs.set_tags(run_id, {"bratslab.model_uri": model_uri})
    tags: dict[str, Any] = {
        **winner["tta"],
        "bratslab.sweep": sweep_name,
        "bratslab.trial_id": winner["trial_id"],
        "bratslab.best_checkpoint": winner["best_checkpoint"],
        "bratslab.selection_metric": metric,
    }
    tags.update({f"param.{k}": v for k, v in (winner.get("params") or {}).items()})
    version = registry.register(model_uri, name, tags)
    promoted = registry.promote_if_better(name, version, metric, mode, alias)
    log.info(
        "registered %s v%s (trial %s, %s=%.4f); %s",
        name, version, winner["trial_id"], metric, winner["tta"][metric],
        f"alias {alias!r} moved" if promoted else f"alias {alias!r} stays",
    )  # fmt: skip
    return Registration(name, version, model_uri, promoted, alias, winner["trial_id"])
