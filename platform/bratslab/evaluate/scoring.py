"""``bratslab evaluate``: score a folder of predicted NIfTI segmentations against references.

One row per case and region (WT, TC, ET) with the columns :data:`COLUMNS`: legacy Dice, HD95
(mm) and NSD (:mod:`bratslab.evaluate.metrics`) and the BraTS 2023 lesion-wise Dice/HD95 with
lesion counts (:mod:`bratslab.evaluate.lesionwise`). Labels may use either convention (ET 3 or
4). A reference case with no prediction is scored as an empty prediction (what a challenge
leaderboard does) and listed as missing in the summary.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bratslab.data.labels import REGIONS
from bratslab.evaluate.export import label_masks
from bratslab.evaluate.lesionwise import region_lesion_metrics, resolve_params
from bratslab.evaluate.metrics import region_metrics

log = logging.getLogger(__name__)

COLUMNS = ("case", "region", "dice", "hd95", "nsd", "lesion_dice", "lesion_hd95", "tp", "fp", "fn")
METRICS = ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95")


def source_regions(labels: np.ndarray) -> np.ndarray:
    """Label map ``(X, Y, Z)`` in either convention (ET 3 or 4) → bool ``(3, X, Y, Z)`` WT/TC/ET."""
    masks = label_masks(labels, "regions")
    return np.stack([masks[r] for r in REGIONS])


def score_regions(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    challenge: str = "gli",
    nsd_tolerance_mm: float = 1.0,
    case: str = "",
) -> list[dict]:
    """Rows (:data:`COLUMNS`) for bool regions ``(3, X, Y, Z)`` of one case; spacing in mm."""
    legacy = region_metrics(pred, gt, spacing, nsd_tolerance_mm)
    lesion = region_lesion_metrics(pred, gt, spacing, challenge)
    rows = []
    for r in REGIONS:
        lw = lesion[r]
        rows.append(
            {
                "case": case,
                "region": r,
                **legacy[r],
                "lesion_dice": lw.lesion_dice,
                "lesion_hd95": lw.lesion_hd95,
                "tp": lw.tp,
                "fp": lw.fp,
                "fn": lw.fn,
            }
        )
    return rows


def _load_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for damaged files
        raise ValueError(f"{path}: cannot read the label map: {e}") from None
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D label map, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data != np.rint(data)):
        raise ValueError(f"{path}: label map holds non-integer values")
    labels = data.astype(np.int16)
    bad = set(np.unique(labels).tolist()) - {0, 1, 2, 3, 4}
    if bad:
        raise ValueError(f"{path}: unexpected labels {sorted(bad)} (expected 0, 1, 2, 3|4)")
    return labels, tuple(float(z) for z in img.header.get_zooms()[:3])


def score_case(
    case: str,
    pred_path: Path | None,
    ref_path: Path,
    challenge: str = "gli",
    nsd_tolerance_mm: float = 1.0,
) -> list[dict]:
    """Rows for one case; ``pred_path=None`` scores an empty prediction. Spacing from the ref."""
    ref, spacing = _load_labels(ref_path)
    if pred_path is None:
        pred = np.zeros_like(ref)
    else:
        pred, _ = _load_labels(pred_path)
        if pred.shape != ref.shape:
            raise ValueError(
                f"{pred_path}: shape {pred.shape} differs from the reference {ref_path} "
                f"{ref.shape}; predictions must be in the source geometry"
            )
    return score_regions(
        source_regions(pred), source_regions(ref), spacing, challenge, nsd_tolerance_mm, case
    )


@dataclass
class EvaluationResult:
    """Per-case rows, the summary, and the cases without a prediction."""

    rows: list[dict]
    summary: dict
    missing: list[str] = field(default_factory=list)


def summarise(rows: list[dict], challenge: str, missing: Sequence[str] = ()) -> dict:
    """Mean and median of every metric per region, plus lesion counts and the case count."""
    out: dict = {
        "challenge": challenge,
        "cases": len({r["case"] for r in rows}),
        "missing_predictions": list(missing),
        "regions": {},
    }
    for region in REGIONS:
        sel = [r for r in rows if r["region"] == region]
        stats = {}
        for m in METRICS:
            values = np.array([float(r[m]) for r in sel], dtype=np.float64)
            stats[m] = {
                "mean": float(values.mean()) if len(values) else float("nan"),
                "median": float(np.median(values)) if len(values) else float("nan"),
            }
        for m in ("tp", "fp", "fn"):
            stats[m] = int(sum(int(r[m]) for r in sel))
        out["regions"][region] = stats
    if rows:
        out["mean_dice"] = float(np.mean([out["regions"][r]["dice"]["mean"] for r in REGIONS]))
        out["mean_lesion_dice"] = float(
            np.mean([out["regions"][r]["lesion_dice"]["mean"] for r in REGIONS])
        )
    return out


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    return buf.getvalue()


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    challenge: str = "gli",
    output: str | Path | None = None,
    *,
    nsd_tolerance_mm: float = 1.0,
    workers: int = 1,
    progress: bool = True,
) -> EvaluationResult:
    """Score ``PRED/{case}.nii.gz`` against the ``seg`` of every labelled case under ``ref_dir``.

    With ``output`` the CSV is written there, the summary beside it (``<stem>.summary.json``)
    and a per-region Dice bar chart (``<stem>.png``). ``workers`` > 1 scores cases in parallel
    processes.
    """
    from bratslab.data.layout import discover_cases

    resolve_params(challenge)  # fail fast on an unknown challenge
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such prediction folder")
    refs = [c for c in discover_cases(ref_dir) if c.seg is not None]
    if not refs:
        raise FileNotFoundError(f"{ref_dir}: no cases with a segmentation to score against")
    jobs, missing = [], []
    for c in refs:
        pred = pred_dir / f"{c.id}.nii.gz"
        if not pred.is_file():
            alt = pred_dir / f"{c.id}.nii"
            pred = alt if alt.is_file() else None
        if pred is None:
            missing.append(c.id)
            log.warning("%s: no prediction in %s; scored as empty", c.id, pred_dir)
        jobs.append((c.id, pred, c.seg, challenge, nsd_tolerance_mm))

    rows: list[dict] = []
    from bratslab.evaluate.report import progress_bar

    with progress_bar(progress, len(jobs), "evaluate") as advance:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for case_rows in pool.map(_score_job, jobs):
                    rows.extend(case_rows)
                    advance()
        else:
            for job in jobs:
                rows.extend(_score_job(job))
                advance()
    summary = summarise(rows, challenge, missing)
    if output is not None:
        from bratslab.evaluate.report import write_outputs

        write_outputs(Path(output), rows_to_csv(rows), summary)
    return EvaluationResult(rows=rows, summary=summary, missing=missing)


def _score_job(job: tuple) -> list[dict]:
    return score_case(*job)


__all__ = [
    "COLUMNS",
    "EvaluationResult",
    "evaluate_folder",
    "rows_to_csv",
    "score_case",
    "score_regions",
    "source_regions",
    "summarise",
]
