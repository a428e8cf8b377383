"""``bratslab postprocess fit`` / ``apply`` without the command line: predict a fold's
validation cases, fit, write ``postprocess.json``, store it on the registry; apply a file of
thresholds to a folder of predictions.

The validation cases and their predictions come from ``evaluate-model``'s own functions
(:func:`bratslab.inference.model_eval.validation_cases`, :func:`~bratslab.inference.model_eval.
predict_validation`), so the fit sees exactly what that command scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bratslab import atomic
from bratslab.data.labels import regions_to_labels, to_store_labels
from bratslab.data.preprocess import foreground_bbox
from bratslab.data.profiles import get_profile
from bratslab.data.region_set import store_to_source
from bratslab.evaluate.label_maps import (
    CaseError,
    find_prediction,
    paired_folders,
    prediction_files,
    read_label_map,
    readable_label_maps,
)
from bratslab.evaluate.score_report import progress_bar
from bratslab.inference.model_eval import predict_validation, validation_cases
from bratslab.inference.nifti_out import write_nifti
from bratslab.postprocess.config import CONFIG_KEY, FitConfig, PostprocessConfig
from bratslab.postprocess.fit import FitCase, FitResult, fit_thresholds
from bratslab.tracking.model_folder import canonical_ref

log = logging.getLogger(__name__)


def fit_model(
    model_ref: str | Path,
    store: str | Path,
    fold: int = 0,
    tta: str = "flips",
    *,
    fit: FitConfig | None = None,
    max_cases: int | None = None,
    overlap: float = 0.5,
    device: str = "auto",
    progress: bool = False,
    tta_path: str = "auto",
) -> FitResult:
    """Predict fold ``fold``'s labelled validation cases of ``store`` with ``model_ref`` and fit
    thresholds on them (:func:`bratslab.postprocess.fit.fit_thresholds`).

    The predictions become label maps as ``bratslab predict`` writes them (nested
    reconstruction) before the fit, so the thresholds are fitted on what they will be applied to.
    A model of another profile than BraTS 2021/2023 (post-treatment glioma) gets a minimum size
    per region of its profile (``PostprocessConfig.min_size``).
    """
    fit = fit or FitConfig()
    val = validation_cases(model_ref, store, fold, max_cases)
    rs = val.payload.regions
    predictions = predict_validation(
        val,
        tta,
        overlap=overlap,
        device=device,
        progress=progress,
        stress=fit.stress,
        tta_path=tta_path,
    )
    if rs.legacy:
        cases = [
            FitCase(p.case_id, regions_to_labels(p.pred), p.gt, p.spacing) for p in predictions
        ]
    else:  # label maps in the profile's own values, a reference channel per region of it
        cases = [
            FitCase(p.case_id, store_to_source(p.labels[0], rs.profile), p.gt, p.spacing)
            for p in predictions
        ]
    log.info(
        "fitting post-processing on %d validation cases of fold %d (%d scanner-stressed copies "
        "each)", len(val.cases), fold, fit.stress,
    )  # fmt: skip
    return fit_thresholds(cases, fit, profile=None if rs.legacy else rs.profile)


def _crop_box(labels: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    """The predicted and reference tumour's bounding box plus :data:`FOLDER_CROP_MARGIN`."""
    start, end = foreground_bbox((labels > 0) | (ref > 0))  # the whole volume when empty
    return tuple(
        slice(max(a - FOLDER_CROP_MARGIN, 0), b + FOLDER_CROP_MARGIN)
        for a, b in zip(start, end, strict=True)
    )


# Voxels kept around the union of a case's predicted and reference tumour when the folder fit
# crops it: more than any challenge's lesion-wise dilation (3), so matching is unchanged.
FOLDER_CROP_MARGIN = 8


@dataclass
class FolderFit:
    """``fit_folder``'s outcome: the fit, and the cases left out (case, file, reason)."""

    result: FitResult
    failures: list[dict[str, str]] = field(default_factory=list)


def fit_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    fit: FitConfig | None = None,
    *,
    progress: bool = False,
    profile: str | None = None,
) -> FolderFit:
    """Fit thresholds on predictions already written, ``PRED/{case}.nii.gz``, against the
    segmentations of the labelled cases under ``ref_dir`` (a raw BraTS folder), as nnU-Net
    determines its post-processing on the out-of-fold predictions of a cross-validation.

    Either ET convention on both sides; with ``profile`` (e.g. ``gli-post``), both in that
    profile's labels and a minimum size fitted per region of it. Each case is cropped to its
    predicted and reference tumour plus :data:`FOLDER_CROP_MARGIN` voxels, which changes no
    lesion-wise score and keeps memory to the tumours. A reference case without a prediction,
    or whose files cannot be read or disagree in shape, is reported in ``failures`` and left
    out; the others are fitted.

    Raises:
        FileNotFoundError: no such folder, or no labelled reference case.
        ValueError: no case could be used, or ``fit.stress`` > 0 (stressed copies need a model).
    """
    fit = fit or FitConfig()
    if fit.stress:
        raise ValueError("--stress needs --model and --store: stressed copies are predicted")
    pred_dir, refs = paired_folders(pred_dir, ref_dir, "fit against")
    cases: list[FitCase] = []
    failures: list[dict[str, str]] = []
    with progress_bar(progress, len(refs), "read") as advance:
        for ref in refs:
            pred_path = find_prediction(pred_dir, ref.id)
            try:
                if pred_path is None:
                    raise CaseError(pred_dir / f"{ref.id}.nii.gz", "no prediction for this case")
                cases.append(_folder_case(ref.id, pred_path, ref.seg, profile))
            except CaseError as e:
                log.warning("%s: %s: %s (left out of the fit)", ref.id, e.file, e.reason)
                failures.append({"case": ref.id, "file": e.file, "reason": e.reason})
            advance()
    if not cases:
        raise ValueError(f"{pred_dir}: no case could be used ({len(failures)} failed)")
    name = None if profile is None else get_profile(profile).name
    return FolderFit(fit_thresholds(cases, fit, profile=name), failures)


def _folder_case(
    case_id: str, pred_path: Path, seg_path: Path, profile: str | None = None
) -> FitCase:
    """One :class:`FitCase` from a predicted and a reference label map, cropped (see
    :func:`fit_folder`); raises ``CaseError`` for unreadable files, mismatched shapes or (with
    ``profile``) labels the profile does not have."""
    from bratslab.evaluate.scoring import profile_regions, source_regions
    from bratslab.postprocess.apply import infer_et_label

    pred, _ = read_label_map(pred_path)
    ref, spacing = read_label_map(seg_path)
    if pred.shape != ref.shape:
        raise CaseError(pred_path, f"shape {pred.shape} differs from the reference's {ref.shape}")
    if profile is not None:  # labels as they are; a reference channel per region of it
        prof = get_profile(profile)
        profile_regions(pred, prof, pred_path)  # CaseError for a label it does not have
        gt = profile_regions(ref, prof, seg_path)
        labels = pred.astype(np.uint8)
        box = _crop_box(labels, ref)
        return FitCase(
            case_id, np.ascontiguousarray(labels[box]), gt[(slice(None), *box)], spacing, pred.size
        )
    labels = to_store_labels(pred, infer_et_label(pred))
    box = _crop_box(labels, ref)
    return FitCase(
        case_id, np.ascontiguousarray(labels[box]), source_regions(ref[box]), spacing, labels.size
    )


def result_document(result: FitResult, **source: Any) -> dict[str, Any]:
    """The content of ``postprocess.json``: ``{"config": thresholds, "fit": how they were fit}``;
    ``source`` says what was fitted on (``model``, ``fold``, ``tta``, ``stress``; or ``pred``,
    ``ref``)."""
    return {
        CONFIG_KEY: result.config.model_dump(),
        "fit": {**{k: str(v) if isinstance(v, Path) else v for k, v in source.items()},
                **result.to_dict()},
    }  # fmt: skip


def write_document(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``postprocess.json`` atomically; returns the path."""
    path = atomic.check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, doc)
    return path


def register_document(model_ref: str, path: Path, doc: dict[str, Any]) -> str | None:
    """Store the thresholds on the registered version ``model_ref`` (tags + run artifact).

    Returns ``"NAME version V"``, or None when ``model_ref`` is not a registered version (a
    local checkpoint, ``runs:/``, a bare logged model): nothing is stored then.
    """
    model_ref = canonical_ref(str(model_ref))  # NAME@ALIAS, NAME/V: the registered version
    if not model_ref.startswith("models:/"):
        return None
    from bratslab.tracking import postprocess_store

    if postprocess_store.registered_version(model_ref) is None:
        return None
    fit = doc["fit"]
    keys = ("before", "after", "fold", "tta", "stress", "pred")
    summary = {k: fit[k] for k in keys if k in fit}
    version = postprocess_store.save_thresholds(model_ref, doc[CONFIG_KEY], summary, path)
    return f"{version.name} version {version.version}"


@dataclass
class ApplyReport:
    """What ``postprocess apply`` did: cases written and failures (case, file, reason)."""

    written: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def apply_folder(cfg: PostprocessConfig, in_dir: str | Path, out_dir: str | Path) -> ApplyReport:
    """Apply ``cfg`` to every ``{case}.nii.gz`` mask of ``in_dir``, written to ``out_dir`` with
    the same affine and header (either ET convention, kept as it is). A file that cannot be
    read is reported and the others go on.

    Raises:
        FileNotFoundError: ``in_dir`` is not a folder or holds no masks.
    """
    import nibabel as nib

    from bratslab.postprocess.apply import infer_et_label, postprocess_labels

    files = prediction_files(in_dir)
    if not files:
        raise FileNotFoundError(f"{in_dir}: no {{case}}.nii.gz predictions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ApplyReport()
    for case, path, labels in readable_label_maps(files, report.failures):
        header_img = nib.load(path)  # header only: the data was read and checked above
        out = postprocess_labels(labels.astype(np.uint8), cfg, infer_et_label(labels))
        write_nifti(out_dir / f"{case}.nii.gz", out, header_img.affine, header_img.header)
        report.written.append(case)
    return report


__all__ = [
    "FOLDER_CROP_MARGIN",
    "ApplyReport",
    "FolderFit",
    "apply_folder",
    "fit_folder",
    "fit_model",
    "register_document",
    "result_document",
    "write_document",
]
