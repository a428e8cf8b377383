"""``bratslab evaluate-model``: score a model on a fold's validation cases with TTA.

Works in store space: each val case's ``{id}_x.npy`` goes through sliding-window + TTA inference
and is compared with ``{id}_y.npy`` (no round trip to NIfTI needed). The metrics — legacy Dice
and HD95 plus BraTS lesion-wise Dice per region, and their means — are logged as ``tta/...`` to
the model's MLflow run, which the sweep uses to pick the champion on TTA-evaluated scores rather
than on the training loop's plain validation Dice. When the model carries post-processing
thresholds (:mod:`bratslab.postprocess`), the same metrics after post-processing are reported and
logged under ``pp/``.

The validation cases and their predictions (:func:`validation_cases`,
:func:`predict_validation`) are shared with ``bratslab postprocess fit``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bratslab.data.labels import REGIONS, labels_to_regions, regions_to_labels
from bratslab.data.profiles import get_profile
from bratslab.data.region_set import (
    RegionSet,
    predicted_masks,
    probabilities_to_store_labels,
    region_set,
    scored_masks,
    store_to_source,
)
from bratslab.data.store import Store
from bratslab.evaluate.metrics import region_metrics
from bratslab.evaluate.panoptica_metric import check_installed, lesionwise_dice
from bratslab.evaluate.score_report import progress_bar
from bratslab.inference.model_loading import build_from_payload, load_payload, resolve_device
from bratslab.postprocess.resolve import check_fits_regions, resolve_postprocess

if TYPE_CHECKING:
    from bratslab.data.store import Store
    from bratslab.inference.model_loading import ModelPayload
    from bratslab.postprocess.config import PostprocessConfig
    from bratslab.postprocess.resolve import Choice

log = logging.getLogger(__name__)

RUN_STATE_FILE = "bratslab_run.json"  # written by the trainer beside a job's checkpoints
PP_PREFIX = "pp/"  # metrics after post-processing


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


@dataclass
class Validation:
    """A model and the validation cases of one fold of a store, checked and ready to predict."""

    model_ref: str
    payload: ModelPayload
    store: Store
    fold: int
    cases: list[str]


@dataclass
class ValPrediction:
    """One predicted validation case: bool regions ``(S, X, Y, Z)`` of the prediction and of the
    reference, one per scored region of the model's profile (WT, TC, ET for BraTS 2021/2023),
    and the voxel spacing in mm."""

    case_id: str
    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...]
    # store labels ``(X, Y, Z)`` of the prediction and the reference (the panoptica metric
    # matches lesions in label maps)
    labels: tuple[np.ndarray, np.ndarray] | None = None


def validation_cases(
    model_ref: str | Path, store: str | Path, fold: int, max_cases: int | None = None
) -> Validation:
    """Load ``model_ref`` and list fold ``fold``'s labelled validation cases of ``store``
    (the first ``max_cases``); warns when the model was trained on another store.

    Raises:
        ValueError: fold out of range, or no labelled validation case.
    """
    payload = load_payload(model_ref)
    st = Store(store)
    trained_on = payload.info.get("store_fingerprint_hash")
    if trained_on not in (None, st.fingerprint_hash):
        log.warning(
            "%s was trained on a store with fingerprint %s, evaluating on %s (%s)",
            model_ref, trained_on, store, st.fingerprint_hash,
        )  # fmt: skip
    if not 0 <= fold < st.num_folds:
        raise ValueError(f"{store}: fold {fold} out of range (store has {st.num_folds} folds)")
    check_same_regions(payload.regions, region_set(st.profile), str(model_ref), str(store))
    labelled = set(st.labeled_ids())
    cases = [c for c in st.case_ids(fold=fold, split="val") if c in labelled]
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise ValueError(f"{store}: fold {fold} has no labelled validation cases")
    return Validation(str(model_ref), payload, st, fold, cases)


def check_same_regions(model: RegionSet, store: RegionSet, model_ref: str, where: str) -> None:
    """A model scores only on a store of its own profile's regions (the BraTS 2021 and 2023
    stores share theirs).

    Raises:
        ValueError: the profiles' regions differ (both are named).
    """
    if model.scored != store.scored or model.members != store.members:
        raise ValueError(
            f"{model_ref} predicts the {model.profile} regions "
            f"({', '.join(r.upper() for r in model.scored)}), but {where} holds "
            f"{store.profile} cases ({', '.join(r.upper() for r in store.scored)})"
        )


def predict_validation(
    val: Validation,
    tta: str = "flips",
    *,
    overlap: float = 0.5,
    device: str = "auto",
    amp: bool = True,
    progress: bool = False,
    stress: int = 0,
    tta_path: str = "auto",
) -> Iterator[ValPrediction]:
    """Sliding-window + TTA predictions of ``val``'s cases in store space, one at a time.

    ``stress`` > 0 adds that many stressed copies of each case after it (small lesions pasted
    in, then scanner shift: :func:`bratslab.data.augment.stress_case`, seeded by the case and
    the copy), with ids ``{case}~stress{k}`` and references that include the pasted lesions.
    """
    from bratslab.inference.sliding_window import predict_probabilities

    model = build_from_payload(val.payload)
    output, rs = val.payload.output, val.payload.regions
    dev = resolve_device(device)
    st = val.store
    total = len(val.cases) * (1 + stress)
    with progress_bar(progress, total, f"evaluate fold {val.fold}") as advance:
        for cid, cid_k, x, y in _cases_and_stressed_copies(st, val.cases, stress):
            probs, _ = predict_probabilities(
                model,
                x,
                roi_size=[int(s) for s in val.payload.info["patch_size"]],
                overlap=overlap,
                tta=tta,
                device=dev,
                activation="sigmoid" if output == "regions" else "softmax",
                amp=amp,
                tta_path=tta_path,
            )
            gt = scored_masks(y, rs)
            pred = predicted_masks(probs, output, rs)
            labels = (probabilities_to_store_labels(probs, output, rs), _squeezed(y))
            yield ValPrediction(cid_k, pred, gt, tuple(st.meta(cid).zooms), labels)
            advance(f"evaluate {cid_k}")


def _cases_and_stressed_copies(
    st: Store, cases: list[str], stress: int
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(case, id, x, y)`` for each case and then its ``stress`` stressed copies: each case is
    read from the store once; copy ``k`` has id ``{case}~stress{k}`` and is seeded by it."""
    from bratslab.data.augment import stress_case

    for cid in cases:
        x = np.asarray(st.load_x(cid), dtype=np.float32)
        y = np.asarray(st.load_y(cid))
        yield cid, cid, x, y
        for k in range(1, stress + 1):
            cid_k = f"{cid}~stress{k}"
            yield (cid, cid_k, *stress_case(x, y, zlib.crc32(cid_k.encode())))


def _squeezed(y: np.ndarray) -> np.ndarray:
    """Store labels ``(1, X, Y, Z)`` or ``(X, Y, Z)`` → ``(X, Y, Z)``."""
    y = np.asarray(y)
    return y[0] if y.ndim == 4 else y


def score_case(
    pred: np.ndarray, gt: np.ndarray, spacing, challenge, regions=REGIONS
) -> dict[str, float]:
    """Legacy Dice and HD95 and lesion-wise Dice per region of bool ``(R, X, Y, Z)`` masks named
    ``regions`` (default WT, TC, ET); ``challenge`` None: no lesion-wise Dice."""
    from bratslab.evaluate.lesionwise import region_lesion_metrics

    legacy = region_metrics(pred, gt, spacing, regions=regions)
    lesion = region_lesion_metrics(pred, gt, spacing, challenge, regions) if challenge else {}
    row = {}
    for r in regions:
        row[f"dice_{r}"] = legacy[r]["dice"]
        row[f"hd95_{r}"] = legacy[r]["hd95"]
        if r in lesion:
            row[f"lesion_dice_{r}"] = lesion[r].lesion_dice
    return row


def panoptica_row(case: ValPrediction, rs: RegionSet) -> dict[str, float]:
    """``lesion_dice_<r>`` of one case by the organisers' panoptica metric (sq_dsc per region
    of the model's profile)."""
    pred, ref = (store_to_source(labels, rs.profile) for labels in case.labels)
    scores = lesionwise_dice(pred, ref, case.spacing, rs.profile)
    return {f"lesion_dice_{r}": scores[r] for r in rs.scored}


def score_validation_case(case: ValPrediction, rs: RegionSet, challenge: str) -> dict[str, float]:
    """:func:`score_case` over the scored regions of ``rs``, lesion-wise Dice by ``challenge``:
    ``panoptica``, or the BraTS 2023 definition (a WT/TC/ET model: that challenge's parameters;
    another profile's model: the profile's)."""
    names = tuple(rs.scored)
    if challenge == "panoptica":
        return {
            **score_case(case.pred, case.gt, case.spacing, None, names),
            **panoptica_row(case, rs),
        }
    params = challenge if rs.legacy else profile_lesion_params(rs.profile)
    return score_case(case.pred, case.gt, case.spacing, params, names)


def postprocessed_regions(pred: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Bool regions ``(3, X, Y, Z)`` → labels (as ``predict`` writes them) → ``cfg`` → regions."""
    from bratslab.postprocess.apply import postprocess_labels

    return labels_to_regions(postprocess_labels(regions_to_labels(pred), cfg))


def postprocessed(case: ValPrediction, cfg: PostprocessConfig, rs: RegionSet) -> ValPrediction:
    """``case`` with its prediction post-processed by ``cfg`` as ``predict`` would: the label map
    it writes (WT/TC/ET rebuilt, or the profile's labels), ``cfg`` applied, regions again."""
    from bratslab.postprocess.apply import postprocess_labels

    if rs.legacy:
        labels = postprocess_labels(regions_to_labels(case.pred), cfg)
        pred = labels_to_regions(labels)
    else:  # the 2024+ profiles keep their source values in the store
        labels = postprocess_labels(case.labels[0], cfg)
        pred = scored_masks(labels, rs)
    both = (labels, case.labels[1]) if case.labels else None
    return dataclasses.replace(case, pred=pred, labels=both)


def summarise(per_case: list[dict[str, float]], prefix: str, regions=REGIONS) -> dict[str, float]:
    """Means over cases as ``{prefix}{key}``, plus ``{prefix}{name}_mean`` over ``regions``."""
    metrics: dict[str, float] = {}
    for key in per_case[0]:
        metrics[f"{prefix}{key}"] = float(np.mean([row[key] for row in per_case]))
    for name in ("dice", "hd95", "lesion_dice"):
        metrics[f"{prefix}{name}_mean"] = float(
            np.mean([metrics[f"{prefix}{name}_{r}"] for r in regions])
        )
    metrics[f"{prefix}cases"] = float(len(per_case))
    return metrics


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
    postprocess: Choice = "model",
    tta_path: str = "auto",
) -> dict[str, float]:
    """Score ``model_ref`` on fold ``fold``'s validation cases of ``store``.

    Args:
        model_ref: checkpoint folder or MLflow model URI (``runs:/``, ``models:/``).
        store: preprocessed store folder (``dataset.json``).
        fold: fold index; its ``val`` cases with labels are scored (``max_cases`` first ones).
        tta: ``none``, ``flips`` or ``flips+rot90``.
        challenge: lesion-wise Dice: the BraTS 2023 definition with that challenge's
            parameters (``gli``, ``ssa``, ``ped``, ``men``, ``met``; a model of a 2024+ profile
            uses its profile's), or ``panoptica`` (the organisers' metric since 2025; needs
            the extra).
        run_id: MLflow run to log to; found from ``model_ref`` when None (:func:`find_run_id`).
        log_to_mlflow: log ``tta/...`` metrics to that run (skipped with a warning if unknown).
        postprocess: ``"model"`` (the thresholds a registered version carries, if any),
            ``"none"``, or explicit thresholds; when there are some, every metric is also
            reported after post-processing under ``pp/`` (:func:`resolve_postprocess`).
        tta_path: how the TTA views run (:mod:`bratslab.inference.tta_path`; same scores).

    Returns:
        ``{"tta/dice_wt", "tta/dice_tc", "tta/dice_et", "tta/dice_mean", "tta/hd95_*",
        "tta/lesion_dice_*", "tta/cases"}`` — means over the scored cases, per region of the
        model's profile (WT, TC, ET; the six of post-treatment glioma, whose lesion-wise
        parameters are the profile's) — and the same keys under ``pp/`` when post-processing
        applies (WT/TC/ET models only).
    """
    val = validation_cases(model_ref, store, fold, max_cases)
    pp = resolve_postprocess(postprocess, str(model_ref))
    rs = val.payload.regions
    if challenge == "panoptica":
        check_installed()  # MissingExtraError naming the extra, before any case is predicted
    check_fits_regions(pp, rs, str(model_ref))
    per_case: list[dict[str, float]] = []
    per_case_pp: list[dict[str, float]] = []
    for case in predict_validation(
        val, tta, overlap=overlap, device=device, amp=amp, progress=progress, tta_path=tta_path
    ):
        per_case.append(score_validation_case(case, rs, challenge))
        if pp is not None:
            per_case_pp.append(score_validation_case(postprocessed(case, pp, rs), rs, challenge))

    metrics = summarise(per_case, "tta/", tuple(rs.scored))
    if per_case_pp:
        metrics.update(summarise(per_case_pp, PP_PREFIX))
    if log_to_mlflow:
        _log_metrics(model_ref, run_id, metrics, val.payload.info, tta, fold)
    return metrics


def profile_lesion_params(profile: str):
    """The BraTS 2023-family lesion-wise parameters of a profile (dilation, small-lesion floor)."""
    from bratslab.evaluate.lesionwise import profile_params

    return profile_params(get_profile(profile))


def _log_metrics(model_ref, run_id, metrics, info, tta: str, fold: int) -> None:
    rid = find_run_id(model_ref, run_id)
    if rid is None:
        log.warning("no MLflow run known for %s: tta/ metrics not logged", model_ref)
        return
    from bratslab.tracking import mlflow_runs

    step = int(info.get("epoch", 0))
    mlflow_runs.log_metrics(rid, metrics, step)
    mlflow_runs.set_tags(rid, {"bratslab.tta": tta, "bratslab.tta_fold": str(fold)})
    log.info("logged %d tta/ metrics to run %s", len(metrics), rid)


__all__ = [
    "PP_PREFIX",
    "ValPrediction",
    "Validation",
    "evaluate_model",
    "find_run_id",
    "postprocessed_regions",
    "predict_validation",
    "score_case",
    "summarise",
    "validation_cases",
]
