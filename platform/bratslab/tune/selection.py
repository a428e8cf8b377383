"""After the search: re-evaluate the top-k trials with TTA, register the winner, move the alias.

Validation Dice during training is measured without test-time augmentation on a few cases, so
the sweep ranks its trials by it only to pick ``top_k`` candidates; each candidate's best
checkpoint is then evaluated on the whole validation fold with flip TTA
(:func:`bratslab.inference.model_eval.evaluate_model`), and the best of those becomes a new
registered version. The ``champion`` alias moves to it only if it beats the current champion
on the selection metric (:func:`bratslab.tracking.registry.promote_if_better`).

The registered name comes from the job (:func:`registry_name`): ``sweep.registry_name`` when
set, else the job's MLflow experiment, else (when that is the generic default) the job name.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bratslab.inference.model_eval import evaluate_model
from bratslab.tracking import mlflow_runs, model_store, registry
from bratslab.tracking.config import TrackingSection
from bratslab.tune.trial_result import TrialResult

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


def rank_candidates(rows: list[TrialResult], mode: str, top_k: int) -> list[TrialResult]:
    """The ``top_k`` trials with a checkpoint, best ``best_metric`` first."""
    scored = [
        r
        for r in rows
        if r.best_checkpoint and r.best_metric is not None and math.isfinite(r.best_metric)
    ]
    scored.sort(key=lambda r: r.best_metric, reverse=(mode == "max"))
    return scored[:top_k]


def pick_winner(candidates: list[TrialResult], metric: str, mode: str) -> TrialResult | None:
    """The candidate with the best finite ``tta[metric]`` (ties: the better-ranked one)."""
    best, best_value = None, None
    for c in candidates:
        v = c.tta.get(metric)
        if v is None or not math.isfinite(v):
            continue
        if best_value is None or (v > best_value if mode == "max" else v < best_value):
            best, best_value = c, v
    return best


def model_name(text: str) -> str:
    """``text`` as a registered-model name: runs of characters other than letters, digits,
    ``_``, ``.`` and ``-`` become ``-`` (MLflow rejects ``/`` and ``:``, and ``@`` would split a
    ``models:/NAME@alias`` URI); leading/trailing ``-`` and ``.`` are dropped."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "bratslab-model"


def default_registry_name(job_name: str, experiment: str) -> str:
    """The job's MLflow experiment, unless it is the generic default (``bratslab``), else the
    job name; as a valid registered-model name (:func:`model_name`)."""
    generic = TrackingSection.model_fields["experiment"].default
    return model_name(experiment if experiment and experiment != generic else job_name)


def registry_name(spec) -> str:
    """The registered-model name of a sweep's winner: ``sweep.registry_name`` when set, else
    :func:`default_registry_name` of the job (``spec`` is a ``JobSpec`` with a sweep)."""
    return spec.sweep.registry_name or default_registry_name(spec.name, spec.tracking.experiment)


@dataclass
class Registration:
    """The winner as registered."""

    name: str
    version: str
    model_uri: str
    promoted: bool
    alias: str
    trial_id: str


TTA_DONE_TAG = "bratslab.tta_done"  # on a trial's run: which re-evaluation its tta/* record


def evaluate_candidates(
    candidates: list[TrialResult],
    store: str,
    fold: int,
    tta: str,
    *,
    evaluate=None,
    lesionwise: str | None = None,
) -> list[TrialResult]:
    """Set each candidate's ``tta`` (a dict of ``tta/*`` metrics), in place.

    Each re-evaluation is logged to the trial's own MLflow run, then recorded there as the tag
    ``bratslab.tta_done`` (TTA, fold, checkpoint): a sweep stopped during this stage and resumed
    takes those candidates' metrics from their runs instead of evaluating them again.
    ``evaluate`` defaults to :func:`bratslab.inference.model_eval.evaluate_model`;
    ``lesionwise`` is the trials' ``training.val_lesionwise`` (the lesion-wise family and
    parameters the TTA scores use too; default ``gli``).
    """
    if evaluate is None:
        evaluate = evaluate_model
    for c in candidates:
        run_id = c.mlflow_run_id
        challenge = lesionwise or "gli"
        done = f"{tta} | fold {fold} | {c.best_checkpoint}"
        if challenge != "gli":  # another lesion-wise metric is another re-evaluation
            done += f" | {challenge}"
        recorded = _recorded_tta(run_id, done) if run_id else None
        if recorded:
            log.info("trial %s already re-evaluated with TTA (%s)", c.trial_id, done)
            c.tta = recorded
            continue
        log.info("TTA re-evaluation of trial %s (%s)", c.trial_id, c.best_checkpoint)
        # evaluate_model also logs the tta/* metrics to the trial's own MLflow run.
        result = evaluate(
            c.best_checkpoint,
            store,
            fold,
            tta,
            run_id=run_id,
            log_to_mlflow=bool(run_id),
            challenge=challenge,
        )
        c.tta = tta_metrics(result)
        if run_id:
            mlflow_runs.set_tags(run_id, {TTA_DONE_TAG: done})
    return candidates


def _recorded_tta(run_id: str, done: str) -> dict[str, float] | None:
    """The ``tta/*`` metrics a trial's run holds from the re-evaluation ``done``, if it has
    recorded that one (as :func:`evaluate_candidates` computes them)."""
    info = mlflow_runs.run_info(run_id)
    if info["tags"].get(TTA_DONE_TAG) != done:
        return None
    logged = {k: v for k, v in info["metrics"].items() if k.startswith(("tta/", "pp/"))}
    return tta_metrics(logged) or None


def describe_winner(winner: TrialResult, sweep_name: str, metric: str) -> str:
    """A registered version's description: where it comes from and its TTA scores in words."""
    tta = winner.tta

    # WT, TC, ET, or every region of the model's profile (ET, NETC, SNFH, RC, TC, WT), in the
    # order the evaluation reported them
    regions = [k.removeprefix("tta/dice_") for k in tta if k.startswith("tta/dice_")]
    regions = [r for r in regions if r != "mean"]
    names = " / ".join(r.upper() for r in regions)

    def scores(prefix: str) -> str:
        keys = [f"tta/{prefix}_{r}" for r in regions]
        if not keys or not all(k in tta for k in keys):
            return ""
        mean = tta.get(f"tta/{prefix}_mean")
        tail = f" (mean {mean:.3f})" if mean is not None else ""
        return " / ".join(f"{tta[k]:.3f}" for k in keys) + tail

    lines = [f"Sweep {sweep_name}, trial {winner.trial_id}; selected by {metric}."]
    if voxel := scores("dice"):
        lines.append(f"TTA Dice {names}: {voxel}.")
    if lesion := scores("lesion_dice"):
        lines.append(f"TTA lesion-wise Dice {names}: {lesion}.")
    if winner.params:
        lines.append("Sampled: " + ", ".join(f"{k}={v}" for k, v in sorted(winner.params.items())))
    return "\n".join(lines)


def register_winner(
    winner: TrialResult,
    *,
    name: str,
    sweep_name: str,
    metric: str,
    mode: str,
    alias: str,
) -> Registration:
    """Log the winner's checkpoint as an MLflow model in its trial run, register, promote.

    Tags of the version: every ``tta/*`` metric, the sweep and trial ids, and each sampled
    parameter as ``param.<dotted key>`` (nothing machine-local: the checkpoint folder stays in
    the trial run's tags); its description says the same in words.
    """
    run_id = winner.mlflow_run_id
    if not run_id:
        raise RuntimeError(f"trial {winner.trial_id}: no MLflow run to log the model in")
    model_uri = model_store.log_model_dir(winner.best_checkpoint, run_id=run_id)
    mlflow_runs.set_tags(run_id, {"bratslab.model_uri": model_uri})
    tags: dict[str, Any] = {
        **winner.tta,
        "bratslab.sweep": sweep_name,
        "bratslab.trial_id": winner.trial_id,
        "bratslab.selection_metric": metric,
    }
    tags.update({f"param.{k}": v for k, v in winner.params.items()})
    version = registry.register(
        model_uri, name, tags, description=describe_winner(winner, sweep_name, metric)
    )
    promoted = registry.promote_if_better(name, version, metric, mode, alias)
    log.info(
        "registered %s v%s (trial %s, %s=%.4f); %s",
        name, version, winner.trial_id, metric, winner.tta[metric],
        f"alias {alias!r} moved" if promoted else f"alias {alias!r} stays",
    )  # fmt: skip
    return Registration(name, version, model_uri, promoted, alias, winner.trial_id)
