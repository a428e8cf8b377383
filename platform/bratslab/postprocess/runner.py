"""``bratslab postprocess fit`` / ``apply`` without the command line: predict a fold's
validation cases, fit, write ``postprocess.json``, store it on the registry; apply a file of
thresholds to a folder of predictions.

The validation cases and their predictions come from ``evaluate-model``'s own functions
(:func:`bratslab.evaluate.model_eval.validation_cases`, :func:`~bratslab.evaluate.model_eval.
predict_validation`), so the fit sees exactly what that command scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bratslab import atomic
from bratslab.data.labels import regions_to_labels
from bratslab.postprocess.config import CONFIG_KEY, FitConfig, PostprocessConfig
from bratslab.postprocess.fit import FitCase, FitResult, fit_thresholds

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
) -> FitResult:
    """Predict fold ``fold``'s labelled validation cases of ``store`` with ``model_ref`` and fit
    thresholds on them (:func:`bratslab.postprocess.fit.fit_thresholds`).

    The predictions become label maps as ``bratslab predict`` writes them (nested
    reconstruction) before the fit, so the thresholds are fitted on what they will be applied to.
    """
    from bratslab.evaluate.model_eval import predict_validation, validation_cases

    fit = fit or FitConfig()
    val = validation_cases(model_ref, store, fold, max_cases)
    cases = [
        FitCase(p.case_id, regions_to_labels(p.pred), p.gt, p.spacing)
        for p in predict_validation(
            val, tta, overlap=overlap, device=device, progress=progress, stress=fit.stress
        )
    ]
    log.info(
        "fitting post-processing on %d validation cases of fold %d (%d scanner-stressed copies "
        "each)", len(val.cases), fold, fit.stress,
    )  # fmt: skip
    return fit_thresholds(cases, fit)


def result_document(result: FitResult, *, model_ref: str, fold: int, tta: str) -> dict[str, Any]:
    """The content of ``postprocess.json``: ``{"config": thresholds, "fit": how they were fit}``."""
    return {
        CONFIG_KEY: result.config.model_dump(),
        "fit": {"model": str(model_ref), "fold": fold, "tta": tta, **result.to_dict()},
    }


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
    if not str(model_ref).startswith("models:/"):
        return None
    from bratslab.tracking import postprocess_store

    if postprocess_store.registered_version(model_ref) is None:
        return None
    fit = doc["fit"]
    summary = {k: fit[k] for k in ("before", "after", "fold", "tta")}
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

    from bratslab.evaluate.label_maps import prediction_files, readable_label_maps
    from bratslab.evaluate.nifti_out import write_nifti
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
    "ApplyReport",
    "apply_folder",
    "fit_model",
    "register_document",
    "result_document",
    "write_document",
]
