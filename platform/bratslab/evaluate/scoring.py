"""``bratslab evaluate``: score a folder of predicted NIfTI segmentations against references.

One row per case and region (WT, TC, ET) with the columns :data:`COLUMNS`: legacy Dice, HD95
(mm) and NSD (:mod:`bratslab.evaluate.metrics`) and the BraTS 2023 lesion-wise Dice/HD95 with
lesion counts (:mod:`bratslab.evaluate.lesionwise`). Labels may use either convention (ET 3 or
4). A reference case with no prediction is scored as an empty prediction (what a challenge
leaderboard does) and listed as missing in the summary. A case whose prediction or reference
cannot be read is left out of the rows and listed as failed (case, file, reason) while the other
cases are scored.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bratslab.data.conventions import relabel_values
from bratslab.data.labels import REGIONS
from bratslab.data.profiles import Profile, get_profile
from bratslab.evaluate.export import label_masks
from bratslab.evaluate.label_maps import (
    CaseError,
    find_prediction,
    paired_folders,
    read_label_map,
)
from bratslab.evaluate.lesionwise import (
    LesionParams,
    profile_params,
    region_lesion_metrics,
    resolve_params,
)
from bratslab.evaluate.metrics import region_metrics
from bratslab.evaluate.score_report import (
    check_output_files,
    plot_path,
    progress_bar,
    summary_path,
    write_outputs,
)

log = logging.getLogger(__name__)

COLUMNS = ("case", "region", "dice", "hd95", "nsd", "lesion_dice", "lesion_hd95", "tp", "fp", "fn")
METRICS = ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95")


def source_regions(labels: np.ndarray) -> np.ndarray:
    """Label map ``(X, Y, Z)`` in either convention (ET 3 or 4) → bool ``(3, X, Y, Z)`` WT/TC/ET."""
    masks = label_masks(labels, "regions")
    return np.stack([masks[r] for r in REGIONS])


def profile_regions(labels: np.ndarray, profile: Profile, path: Path) -> np.ndarray:
    """Label map ``(X, Y, Z)`` in ``profile``'s convention → bool ``(R, X, Y, Z)``, one channel
    per region of the profile.

    Raises:
        CaseError: a label the profile does not have.
    """
    bad = sorted(set(np.unique(labels).tolist()) - set(profile.allowed_labels))
    if bad:
        raise CaseError(
            path, f"labels {bad} outside the {profile.name} convention {profile.allowed_labels}"
        )
    return np.stack([np.isin(labels, members) for members in profile.regions.values()])


def score_regions(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    challenge: str | LesionParams = "gli",
    nsd_tolerance_mm: float = 1.0,
    case: str = "",
    regions: Sequence[str] = REGIONS,
) -> list[dict]:
    """Rows (:data:`COLUMNS`) for bool regions ``(R, X, Y, Z)`` named ``regions`` of one case;
    spacing in mm."""
    legacy = region_metrics(pred, gt, spacing, nsd_tolerance_mm, regions)
    lesion = region_lesion_metrics(pred, gt, spacing, challenge, regions)
    rows = []
    for r in regions:
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


def relabelled_reference(ref: np.ndarray, relabel: dict[int, int], path: Path) -> np.ndarray:
    """A reference in its dataset's values → the profile's (nnU-Net labelsTr)."""
    bad = sorted(set(np.unique(ref).tolist()) - set(relabel))
    if bad:
        raise CaseError(path, f"labels {bad} are not declared in dataset.json")
    return relabel_values(ref, relabel).astype(ref.dtype)


def read_pair(ref_path, pred_path, relabel: dict[int, int] | None = None):
    """``(ref, pred, spacing)`` of one case: the reference (relabelled to the profile's values
    when ``relabel``), the prediction (all background when ``pred_path`` is None) and the
    reference's voxel spacing (mm).

    Raises:
        CaseError: a file that cannot be read, or a prediction whose shape differs from the
            reference (predictions must be in the source geometry).
    """
    ref, spacing = read_label_map(ref_path)
    if relabel:
        ref = relabelled_reference(ref, relabel, ref_path)
    if pred_path is None:
        pred = np.zeros_like(ref)
    else:
        pred, _ = read_label_map(pred_path)
        if pred.shape != ref.shape:
            raise CaseError(
                pred_path,
                f"shape {pred.shape} differs from the reference {ref_path} {ref.shape}; "
                "predictions must be in the source geometry",
            )
    return ref, pred, spacing


def score_case(
    case: str,
    pred_path: Path | None,
    ref_path: Path,
    challenge: str | LesionParams = "gli",
    nsd_tolerance_mm: float = 1.0,
    profile: str | None = None,
    relabel: dict[int, int] | None = None,
) -> list[dict]:
    """Rows for one case; ``pred_path=None`` scores an empty prediction. Spacing from the ref.
    With ``profile``: the labels are in its convention and every region of it is scored.
    ``relabel``: the reference's values → the profile's (an nnU-Net dataset's labelsTr).

    Raises:
        CaseError: a file that cannot be read, holds bad labels, or a prediction whose shape
            differs from the reference.
    """
    ref, pred, spacing = read_pair(ref_path, pred_path, relabel)
    if profile is not None:
        prof = get_profile(profile)
        pred_r, ref_r = profile_regions(pred, prof, pred_path), profile_regions(ref, prof, ref_path)
        regions = tuple(prof.regions)
        return score_regions(pred_r, ref_r, spacing, challenge, nsd_tolerance_mm, case, regions)
    if (ref == 3).any() and (ref == 4).any():  # no 2021/2023 convention has both
        raise CaseError(
            ref_path,
            "holds labels 3 and 4: post-treatment glioma (ET 3, RC 4)? give --profile "
            "brats2024-gli to score its regions",
        )
    return score_regions(
        source_regions(pred), source_regions(ref), spacing, challenge, nsd_tolerance_mm, case
    )


@dataclass
class EvaluationResult:
    """Per-case rows, the summary, the cases without a prediction and the cases that could not
    be scored (``{"case", "file", "reason"}``)."""

    rows: list[dict]
    summary: dict
    missing: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def summarise(
    rows: list[dict],
    challenge: str,
    missing: Sequence[str] = (),
    failures: Sequence[dict[str, str]] = (),
    regions: Sequence[str] = REGIONS,
) -> dict:
    """Mean and median of every metric per region, plus lesion counts and the case count
    (scored cases; failed ones are listed under ``failed``)."""
    out: dict = {
        "challenge": challenge,
        "cases": len({r["case"] for r in rows}),
        "missing_predictions": list(missing),
        "failed": [dict(f) for f in failures],
        "regions": {},
    }
    for region in regions:
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
        out["mean_dice"] = float(np.mean([out["regions"][r]["dice"]["mean"] for r in regions]))
        out["mean_lesion_dice"] = float(
            np.mean([out["regions"][r]["lesion_dice"]["mean"] for r in regions])
        )
    return out


def rows_to_csv(rows: list[dict], columns: Sequence[str] = COLUMNS, fmt: str = ".6g") -> str:
    """Per-case rows as CSV text: ``columns`` in order, floats written with ``fmt``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: (format(r[k], fmt) if isinstance(r[k], float) else r[k]) for k in columns}
        )
    return buf.getvalue()


class PredictionsMissing(RuntimeError):
    """More than half the reference cases have no prediction (the CLI exits 1)."""


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    challenge: str = "gli",
    output: str | Path | None = None,
    *,
    nsd_tolerance_mm: float = 1.0,
    workers: int = 1,
    progress: bool = True,
    profile: str | None = None,
) -> EvaluationResult:
    """Score ``PRED/{case}.nii.gz`` against the ``seg`` of every labelled case under ``ref_dir``.

    With ``output`` the CSV is written there, the summary beside it (``<stem>.summary.json``)
    and a per-region Dice bar chart (``<stem>.png``). ``workers`` > 1 scores cases in parallel
    processes. A case whose files cannot be read is reported in ``failures`` and left out of
    the rows; the others are still scored and written.

    Raises:
        FileNotFoundError / ValueError: bad usage, found before any case is scored (no such
            folder, no reference segmentations, unknown challenge, ``output`` a directory).
        PredictionsMissing: more than half the references have no prediction (found before
            any case is scored; a few missing ones are scored as empty, as the leaderboard does).
    """
    regions: Sequence[str] = REGIONS
    if profile is not None:  # the profile's regions and lesion-wise parameters
        prof = get_profile(profile)
        profile, regions, challenge = prof.name, tuple(prof.regions), prof.name
        params: str | LesionParams = profile_params(prof)
    else:
        params = challenge
    resolve_params(params)  # fail fast on an unknown challenge
    if output is not None:
        output = Path(output)
        check_output_files(output, summary_path(output), plot_path(output))
    pred_dir, refs = paired_folders(pred_dir, ref_dir, "score against")
    jobs, missing = [], []
    for c in refs:
        pred = find_prediction(pred_dir, c.id)
        if pred is None:
            missing.append(c.id)
        jobs.append((c.id, pred, c.seg, params, nsd_tolerance_mm, profile, c.relabel))
    if 2 * len(missing) > len(refs):  # most likely the wrong folder: nothing worth scoring
        first = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise PredictionsMissing(
            f"{pred_dir}: no prediction for {len(missing)} of the {len(refs)} reference cases "
            f"in {ref_dir} ({first}); are these the predictions of that folder?"
        )
    for case_id in missing:
        log.warning("%s: no prediction in %s; scored as empty", case_id, pred_dir)

    rows, failures = _score_jobs(jobs, workers, progress)
    summary = summarise(rows, challenge, missing, failures, regions)
    if output is not None:
        write_outputs(output, rows_to_csv(rows), summary)
    return EvaluationResult(rows=rows, summary=summary, missing=missing, failures=failures)


def _score_jobs(
    jobs: list[tuple], workers: int, progress: bool
) -> tuple[list[dict], list[dict[str, str]]]:
    """Score ``jobs`` (in order, in ``workers`` processes when > 1) → (rows, failures)."""
    rows: list[dict] = []
    failures: list[dict[str, str]] = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # Spawned, not forked: a fork of a process whose torch thread pool has run (an
            # in-process caller, the demo, a test session) deadlocks in the surface-distance code.
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    max_workers=workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                )
            )
            results = pool.map(_score_job, jobs)
        else:
            results = map(_score_job, jobs)
        advance = stack.enter_context(progress_bar(progress, len(jobs), "evaluate"))
        for case_rows, failure in results:
            rows.extend(case_rows)
            if failure is not None:
                log.warning("%s: %s: %s", failure["case"], failure["file"], failure["reason"])
                failures.append(failure)
            advance()
    return rows, failures


def _init_worker() -> None:
    """One torch thread per scoring process: ``workers`` processes share the machine's cores."""
    import torch

    torch.set_num_threads(1)


def _score_job(job: tuple) -> tuple[list[dict], dict[str, str] | None]:
    """One case's rows, or no rows and ``{"case", "file", "reason"}`` when it cannot be scored."""
    try:
        return score_case(*job), None
    except CaseError as e:
        return [], {"case": job[0], "file": e.file, "reason": e.reason}


__all__ = [
    "COLUMNS",
    "CaseError",
    "EvaluationResult",
    "evaluate_folder",
    "rows_to_csv",
    "score_case",
    "score_regions",
    "source_regions",
    "summarise",
]
