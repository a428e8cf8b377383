"""``bratslab evaluate --metric panoptica``: a prediction folder scored with the panoptica family.

One CSV row per case and region of the profile with :data:`COLUMNS` (panoptica's own keys, see
:mod:`bratslab.evaluate.panoptica_metric`); a JSON summary beside it with the mean and median of
every metric per region over cases. In the summary an infinite HD95 counts as 373 mm and NaN
(both prediction and reference empty) is left out, as the organisers' result parser does; the CSV
keeps panoptica's raw values. A reference case without a prediction is scored as an empty
prediction and listed as missing; a case whose files cannot be read is listed as failed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bratslab.atomic import write_json, write_text
from bratslab.data.profiles import Profile, get_profile
from bratslab.evaluate.label_maps import CaseError, find_prediction, paired_folders
from bratslab.evaluate.panoptica_metric import build_evaluator, capped, score_labels
from bratslab.evaluate.score_report import (
    check_output_files,
    json_finite,
    progress_bar,
    summary_path,
)
from bratslab.evaluate.scoring import read_pair, rows_to_csv

log = logging.getLogger(__name__)

METRICS = (
    "tp",
    "fp",
    "fn",
    "prec",
    "rec",
    "rq",
    "sq_dsc",
    "sq_dsc_std",
    "pq_dsc",
    "sq_nsd",
    "sq_nsd_std",
    "sq_hd95",
    "sq_hd95_std",
    "global_bin_dsc",
    "global_bin_nsd",
    "global_bin_hd95",
    "n_ref_instances",
    "n_pred_instances",
    "global_bin_volume_ref",
    "global_bin_volume_pred",
)
COLUMNS = ("case", "region", *METRICS)


@dataclass
class PanopticaResult:
    """Rows (one per case and region), the summary, missing predictions and failed cases."""

    rows: list[dict]
    summary: dict
    missing: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def score_files(
    case: str,
    pred_path: Path | None,
    ref_path: Path,
    profile: Profile,
    relabel: dict[int, int] | None = None,
) -> list[dict]:
    """Rows of one case (``pred_path=None``: an empty prediction); spacing from the reference.
    ``relabel``: the reference's values → the profile's (an nnU-Net dataset's labelsTr).

    Raises:
        CaseError: unreadable file, shape mismatch or labels outside the profile.
    """
    ref, pred, spacing = read_pair(ref_path, pred_path, relabel)
    for path, arr in ((ref_path, ref), (pred_path, pred)):
        bad = sorted(set(np.unique(arr).tolist()) - set(profile.allowed_labels))
        if bad:
            raise CaseError(
                path, f"labels {bad} outside the {profile.name} convention {profile.allowed_labels}"
            )
    per_region = score_labels(pred, ref, spacing, profile)
    return [
        {"case": case, "region": region, **{m: values.get(m, math.nan) for m in METRICS}}
        for region, values in per_region.items()
    ]


def summarise(
    rows: list[dict], profile: Profile, missing: list[str], failures: list[dict[str, str]]
) -> dict:
    """Mean and median over cases of every metric per region (HD95 ∞ → 373 mm, NaN left out)
    and the summed lesion counts."""
    out: dict = {
        "metric": "panoptica",
        "profile": profile.name,
        "cases": len({r["case"] for r in rows}),
        "missing_predictions": list(missing),
        "failed": [dict(f) for f in failures],
        "regions": {},
    }
    for region in profile.regions:
        sel = [r for r in rows if r["region"] == region]
        stats: dict = {}
        for m in METRICS:
            values = np.array([capped(m, float(r[m])) for r in sel], dtype=np.float64)
            values = values[~np.isnan(values)]
            stats[m] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "median": float(np.median(values)) if values.size else math.nan,
            }
        for m in ("tp", "fp", "fn"):
            stats[m]["sum"] = int(sum(int(r[m]) for r in sel if not math.isnan(r[m])))
        out["regions"][region] = stats
    return out


# Without --profile, by the references' cohort: the profile whose labels read them right
# (2024+ GLI and 2025 MET add RC = 4 to the 2023 labels; 2023 and 2024 PED differ entirely).
_BY_COHORT = {"GLI": "brats2024-gli", "SSA": "brats2023-ssa", "MEN": "brats2023-men",
              "MET": "brats2025-met"}  # fmt: skip


def default_profile(refs: list) -> str:
    """The profile to score reference cases (:class:`RawCase`) in when none is given.

    Raises:
        ValueError: the names do not decide it (the message says to give ``--profile``).
    """
    names = set()
    for c in refs:
        if c.profile is not None:  # an nnU-Net dataset's, or detected
            names.add(c.profile)
        elif c.layout == "brats2021":
            names.add("brats2021")
        else:
            names.add(_BY_COHORT.get(c.cohort or "GLI", ""))
    if len(names) != 1 or "" in names:
        raise ValueError(
            "the reference names do not tell which challenge profile to score; give --profile "
            "(`bratslab data profiles` lists them)"
        )
    return names.pop()


def evaluate_folder_panoptica(
    pred_dir: str | Path,
    ref_dir: str | Path,
    profile: str | Profile | None,
    output: str | Path | None = None,
    *,
    progress: bool = True,
    workers: int = 1,
) -> PanopticaResult:
    """Score ``PRED/{case}.nii.gz`` against every labelled case under ``ref_dir``.

    ``profile``: None picks one from the reference names (:func:`default_profile`). With
    ``output``: the CSV there and ``<stem>.summary.json`` beside it. ``workers`` > 1
    scores cases in parallel processes (a 240×240×155 case takes seconds).

    Raises:
        FileNotFoundError / ValueError: bad usage found before scoring (no such folder, no
            reference, unknown profile, ``output`` a directory).
        MissingExtraError: ``panoptica`` is not installed.
    """
    if output is not None:
        output = Path(output)
        check_output_files(output, summary_path(output))
    pred_dir, refs = paired_folders(pred_dir, ref_dir, "score against")
    prof = get_profile(profile or default_profile(refs))
    build_evaluator(prof)  # fail fast when the extra is missing
    rows: list[dict] = []
    missing: list[str] = []
    failures: list[dict[str, str]] = []
    jobs = []
    for c in refs:
        pred = find_prediction(pred_dir, c.id)
        if pred is None:
            missing.append(c.id)
            log.warning("%s: no prediction in %s; scored as empty", c.id, pred_dir)
        jobs.append((c.id, pred, c.seg, prof, c.relabel))
    with contextlib.ExitStack() as stack:
        results = map(_score_job, jobs)
        if workers > 1:  # spawned, as for the brats2023 family (see scoring._score_jobs)
            pool = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
            results = pool.map(_score_job, jobs)
        advance = stack.enter_context(progress_bar(progress, len(jobs), "evaluate"))
        for case_rows, failure in results:
            rows.extend(case_rows)
            if failure is not None:
                failures.append(failure)
            advance()
    summary = summarise(rows, prof, missing, failures)
    if output is not None:
        write_text(output, rows_to_csv(rows, COLUMNS, ".10g"))
        write_json(summary_path(output), json_finite(summary))
    return PanopticaResult(rows=rows, summary=summary, missing=missing, failures=failures)


def _score_job(job: tuple) -> tuple[list[dict], dict[str, str] | None]:
    """One case's rows, or no rows and ``{"case", "file", "reason"}`` when it cannot be scored."""
    try:
        return score_files(*job), None
    except CaseError as e:
        return [], {"case": job[0], "file": e.file, "reason": e.reason}


def summary_table(summary: dict):
    """A rich table: one row per headline metric, one column per region (mean / median)."""
    from rich.table import Table

    regions = summary["regions"]
    table = Table(
        title=f"{summary['cases']} cases · panoptica · profile {summary['profile']}",
        caption="cells: mean / median over cases (HD95 ∞ counted as 373 mm)",
    )
    table.add_column("metric")
    for r in regions:
        table.add_column(r.upper(), justify="right", no_wrap=True)
    for key, digits in (("sq_dsc", 3), ("pq_dsc", 3), ("rq", 3), ("sq_hd95", 1), ("sq_nsd", 3),
                        ("global_bin_dsc", 3), ("global_bin_hd95", 1)):  # fmt: skip
        table.add_row(
            key,
            *(
                f"{v[key]['mean']:.{digits}f} / {v[key]['median']:.{digits}f}"
                for v in regions.values()
            ),
        )
    table.add_row(
        "lesions TP/FP/FN",
        *(f"{v['tp']['sum']}/{v['fp']['sum']}/{v['fn']['sum']}" for v in regions.values()),
    )
    return table


__all__ = ["COLUMNS", "METRICS", "PanopticaResult", "evaluate_folder_panoptica", "summarise"]
