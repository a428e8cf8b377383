"""``bratslab evaluate-model``: score a model on a fold's validation cases with TTA.

Works in store space: each val case's ``{id}_x.npy`` goes through sliding-window + TTA inference
and is compared with ``{id}_y.npy`` (no round trip to NIfTI needed). The metrics — legacy Dice
and HD95 plus BraTS lesion-wise Dice per region, and their means — are logged as ``tta/...`` to
the model's MLflow run, which the sweep uses to pick the champion on TTA-evaluated scores rather
than on the training loop's plain validation Dice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from bratslab.data.labels import REGIONS, labels_to_regions, probabilities_to_regions

log = logging.getLogger(__name__)

RUN_STATE_FILE = "bratslab_run.json"  # written by the trainer beside a job's checkpoints


def find_run_id(model_ref: str | Path, run_id: str | None = None) -> str | None:
    """The MLflow run that produced ``model_ref``, or None if it cannot be told.

    In order: ``run_id`` if given; ``runs:/<run_id>/...``, ``models:/<model_id>``,
    ``models:/NAME@alias`` or ``models:/NAME/VERSION`` (the source run); a local checkpoint
    folder inside a training job's folder (the trainer's ``bratslab_run.json`` in a parent folder).
    """
    if run_id:
        return run_id
    text = str(model_ref)
    if text.startswith(("runs:/", "models:/")):
        from bratslab.tracking import registry

        return registry.source_run_id(text)
    path = Path(text).expanduser().resolve()
    for folder in [path, *path.parents][:4]:
        state = folder / RUN_STATE_FILE
        if state.is_file():
            try:
                return json.loads(state.read_text()).get("mlflow_run_id")
            except (json.JSONDecodeError, OSError):
                return None
    return None


def evaluate_model(
    model_ref: str | Path,
    store: str | Path,
    fold: int,
    tta: str = "flips",
    *,
    max_cases: int | None = None,
    overlap: float = 0.5,
    challenge: str = "gli",
    run_id: str | None = None,
    log_to_mlflow: bool = True,
    device: str = "auto",
    amp: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Score ``model_ref`` on fold ``fold``'s validation cases of ``store``.

    Args:
        model_ref: checkpoint folder or MLflow model URI (``runs:/``, ``models:/``).
        store: preprocessed store folder (``dataset.json``).
        fold: fold index; its ``val`` cases with labels are scored (``max_cases`` first ones).
        tta: ``none``, ``flips`` or ``flips+rot90``.
        challenge: lesion-wise parameters (``gli``, ``ssa``, ``ped``, ``men``, ``met``).
        run_id: MLflow run to log to; found from ``model_ref`` when None (:func:`find_run_id`).
        log_to_mlflow: log ``tta/...`` metrics to that run (skipped with a warning if unknown).

    Returns:
        ``{"tta/dice_wt", "tta/dice_tc", "tta/dice_et", "tta/dice_mean", "tta/hd95_*",
        "tta/lesion_dice_*", "tta/cases"}`` — means over the scored cases.
    """
    from bratslab.data.store import Store
    from bratslab.evaluate.inference import predict_probabilities
    from bratslab.evaluate.lesionwise import region_lesion_metrics
    from bratslab.evaluate.metrics import region_metrics
    from bratslab.evaluate.model_loading import build_from_payload, load_payload, resolve_device
    from bratslab.evaluate.report import progress_bar

    payload = load_payload(model_ref)
    info = payload.info
    st = Store(store)
    if info.get("store_fingerprint_hash") not in (None, st.fingerprint_hash):
        log.warning(
            "%s was trained on a store with fingerprint %s, evaluating on %s (%s)",
            model_ref,
            info.get("store_fingerprint_hash"),
            store,
            st.fingerprint_hash,
        )
    if not 0 <= fold < st.num_folds:
        raise ValueError(f"{store}: fold {fold} out of range (store has {st.num_folds} folds)")
    labelled = set(st.labeled_ids())
    cases = [c for c in st.case_ids(fold=fold, split="val") if c in labelled]
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise ValueError(f"{store}: fold {fold} has no labelled validation cases")

    model = build_from_payload(payload)
    output = payload.output
    dev = resolve_device(device)
    per_case: list[dict[str, float]] = []
    with progress_bar(progress, len(cases), f"evaluate fold {fold}") as advance:
        for cid in cases:
            x = np.asarray(st.load_x(cid), dtype=np.float32)
            gt = labels_to_regions(np.asarray(st.load_y(cid)))
            probs, _ = predict_probabilities(
                model,
                x,
                roi_size=[int(s) for s in info["patch_size"]],
                overlap=overlap,
                tta=tta,
                device=dev,
                activation="sigmoid" if output == "regions" else "softmax",
                amp=amp,
            )
            pred = probabilities_to_regions(probs, output)
            spacing = st.meta(cid).zooms
            legacy = region_metrics(pred, gt, spacing)
            lesion = region_lesion_metrics(pred, gt, spacing, challenge)
            row = {}
            for r in REGIONS:
                row[f"dice_{r}"] = legacy[r]["dice"]
                row[f"hd95_{r}"] = legacy[r]["hd95"]
                row[f"lesion_dice_{r}"] = lesion[r].lesion_dice
            per_case.append(row)
            advance(f"evaluate {cid}")

    metrics: dict[str, float] = {}
    for key in per_case[0]:
        metrics[f"tta/{key}"] = float(np.mean([row[key] for row in per_case]))
    for name in ("dice", "hd95", "lesion_dice"):
        metrics[f"tta/{name}_mean"] = float(np.mean([metrics[f"tta/{name}_{r}"] for r in REGIONS]))
    metrics["tta/cases"] = float(len(per_case))

    if log_to_mlflow:
        rid = find_run_id(model_ref, run_id)
        if rid is None:
            log.warning("no MLflow run known for %s: tta/ metrics not logged", model_ref)
        else:
            from bratslab.tracking import mlflow_runs

            step = int(info.get("epoch", 0))
            mlflow_runs.log_metrics(rid, metrics, step)
            mlflow_runs.set_tags(rid, {"bratslab.tta": tta, "bratslab.tta_fold": str(fold)})
            log.info("logged %d tta/ metrics to run %s", len(metrics), rid)
    return metrics


__all__ = ["evaluate_model", "find_run_id"]
