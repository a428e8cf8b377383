"""Scoring of ``bratslab recipe ssa`` (:mod:`bratslab.app.recipe`) and its benchmark arms:
post-processing fitted on a shifted store's validation cases, held-out cases predicted with TTA
and scored with BraTS-Africa's lesion-wise parameters, the scores as MLflow metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HELDOUT = "heldout/"  # metric prefix of the held-out scores on the finetune's run


def fit_postprocess(
    model_uri: str,
    store: Path,
    path: Path,
    *,
    tta: str,
    stress: int,
    register: bool = True,
    progress: bool = True,
) -> dict:
    """``postprocess fit`` on fold 0's validation cases of ``store`` (BraTS-Africa's lesion-wise
    parameters), written to ``path`` and, with ``register``, stored on the version (what
    ``predict`` then applies by default). Returns the document (``config``: the thresholds)."""
    from bratslab.inference.postprocess_fit import (
        fit_model,
        register_document,
        result_document,
        write_document,
    )
    from bratslab.postprocess.config import FitConfig

    fit = FitConfig(stress=stress, challenge="ssa")
    result = fit_model(model_uri, store, 0, tta, fit=fit, progress=progress)
    doc = result_document(result, model=model_uri, fold=0, tta=tta, stress=stress)
    write_document(path, doc)
    if register:
        register_document(model_uri, path, doc)
    return doc


def score_heldout(
    model_uri: str, test: Path, pred: Path, *, tta: str, workers: int, postprocess: Any = "model"
):
    """Predict ``test`` with ``model_uri`` (``postprocess``: the thresholds stored on the
    version, ``"none"``, or a config) and score it with BraTS-Africa's lesion-wise parameters.

    Returns:
        :class:`~bratslab.evaluate.scoring.EvaluationResult`; ``pred/metrics.csv`` is written.
    """
    from bratslab.evaluate.score_report import plot_path, summary_path
    from bratslab.evaluate.scoring import evaluate_folder
    from bratslab.inference.config import PredictConfig
    from bratslab.inference.predict import predict_folder

    cfg = PredictConfig(tta=tta, workers=workers, overwrite=True, postprocess=postprocess)
    predict_folder(model_uri, test, pred, cfg)
    metrics = metrics_path(pred)
    metrics.unlink(missing_ok=True)
    for extra in (summary_path(metrics), plot_path(metrics)):  # a rerun scores afresh
        extra.unlink(missing_ok=True)
    return evaluate_folder(pred, test, "ssa", metrics, progress=False)


def metrics_path(pred: Path) -> Path:
    """Where :func:`score_heldout` writes the scores of the predictions in ``pred`` (summary and
    chart beside it: :func:`~bratslab.evaluate.score_report.summary_path`, ``plot_path``)."""
    return pred.parent / f"{pred.name}_metrics.csv"


def heldout_metrics(summary: dict) -> dict[str, float]:
    """``heldout/<region>/{dice,lesion_dice,tp,fp,fn}`` and the two means, for MLflow."""
    out: dict[str, float] = {}
    for region, stats in summary.get("regions", {}).items():
        out[f"{HELDOUT}{region}/dice"] = stats["dice"]["mean"]
        out[f"{HELDOUT}{region}/lesion_dice"] = stats["lesion_dice"]["mean"]
        for k in ("tp", "fp", "fn"):
            out[f"{HELDOUT}{region}/{k}"] = stats[k]
    for k in ("mean_dice", "mean_lesion_dice"):
        if k in summary:
            out[f"{HELDOUT}{k}"] = summary[k]
    return out
