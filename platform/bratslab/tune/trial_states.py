"""How a sweep's trials end in MLflow once Tune is done, and the sweep's one-line tally.

ASHA stops a trial by ending its Tune actor mid-``fit``, so the trial's MLflow run still says
RUNNING when Tune returns. A pruned trial did nothing wrong: its run ends FINISHED with the tags
``bratslab.stop_reason=pruned`` and ``bratslab.pruned_at_epoch`` (the last epoch it trained,
counted from 1). A trial that ran to its last epoch ends FINISHED. KILLED and FAILED are left
for real stops and crashes, each with its reason in ``bratslab.stop_reason``: a trial that
raised is closed FAILED by the train stage itself (``error: ...``); one whose process died
without a word (out of memory, a lost node) still says RUNNING and is closed here as FAILED
(``crashed: ...``); what a dead sweep driver left running is closed by
:mod:`bratslab.tune.dangling` (KILLED, ``driver-lost``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bratslab.shutdown import STOP_REASON_TAG
from bratslab.tracking import mlflow_runs
from bratslab.tune.trial_result import TrialResult

PRUNED = "pruned"
PRUNED_AT_TAG = "bratslab.pruned_at_epoch"
OPEN = ("RUNNING", "FAILED")  # FAILED: an interrupted sweep's trial that Tune later finished


def settle_trial_runs(rows: Iterable[TrialResult], epochs_of: Callable[[TrialResult], int]) -> None:
    """Mark ASHA's stops (``status = "STOPPED_EARLY"``) and close their runs as above.

    Args:
        rows: the sweep's trials, with their MLflow run ids attached.
        epochs_of: the number of epochs a trial's job asked for.
    """
    for r in rows:
        status = mlflow_runs.run_info(r.mlflow_run_id)["status"] if r.mlflow_run_id else None
        if r.status == "ERROR":
            if status == "RUNNING":  # its process died before the train stage could say why
                reason = f"crashed: {(r.error or 'the trial process died').splitlines()[0]}"
                mlflow_runs.set_tags(r.mlflow_run_id, {STOP_REASON_TAG: reason[:500]})
                mlflow_runs.end_run(r.mlflow_run_id, "FAILED")
            continue
        if not r.completed:
            continue
        if r.iterations < epochs_of(r):
            r.status = "STOPPED_EARLY"
        if status not in OPEN:
            continue
        # Tune's verdict (completed without error) is the truth the run should show.
        if r.status == "STOPPED_EARLY":
            tags = {STOP_REASON_TAG: PRUNED, PRUNED_AT_TAG: str(r.iterations)}
            mlflow_runs.set_tags(r.mlflow_run_id, tags)
        mlflow_runs.end_run(r.mlflow_run_id, "FINISHED")


def tally(rows: Iterable[TrialResult]) -> dict[str, int]:
    """How many trials completed (all their epochs), were pruned, failed, are unfinished."""
    counts = {"completed": 0, "pruned": 0, "failed": 0, "unfinished": 0}
    for r in rows:
        if r.status == "ERROR":
            counts["failed"] += 1
        elif r.status == "STOPPED_EARLY":
            counts["pruned"] += 1
        elif r.completed:
            counts["completed"] += 1
        else:
            counts["unfinished"] += 1
    return counts


def tally_line(rows: Iterable[TrialResult]) -> str:
    """``3 trials: 2 completed, 1 pruned by ASHA, 0 failed`` (and any unfinished)."""
    rows = list(rows)
    c = tally(rows)
    line = (
        f"{len(rows)} trials: {c['completed']} completed, {c['pruned']} pruned by ASHA, "
        f"{c['failed']} failed"
    )
    return line + (f", {c['unfinished']} unfinished" if c["unfinished"] else "")
