"""Finding and comparing MLflow runs, as plain data for the CLI's tables.

Works against the embedded store and a tracking server alike (URI from settings or ``uri``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mlflow.exceptions import MlflowException

from bratslab.tracking.driver import driver_gone
from bratslab.tracking.mlflow_runs import TAG_PARENT, client, tracking_uri
from bratslab.tracking.run_ids import is_run_ref, resolve_run_id

#: Metrics shown by ``runs list`` when a run has them (the rest are in ``runs compare``).
HEADLINE_METRICS = ("val/dice_mean", "tta/dice_mean", "tta/lesion_dice_mean", "train/loss")
#: Params shown by ``runs list`` (flattened job-spec keys).
HEADLINE_PARAMS = ("model.arch",)


class RunLookupError(LookupError):
    """An experiment, sweep or run named on the command line does not exist."""


@dataclass
class RunRow:
    """One run, flattened: identity, state, and its latest metric values."""

    run_id: str
    name: str
    experiment: str
    status: str
    start: datetime | None
    duration_s: float | None
    parent_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    driver_gone: bool = False  # RUNNING, but its driver process on this host is dead

    @property
    def shown_status(self) -> str:
        """``status``, or ``RUNNING (driver gone)`` for a run no process drives any more."""
        return f"{self.status} (driver gone)" if self.driver_gone else self.status


def _row(run, experiments: dict[str, str]) -> RunRow:
    info = run.info
    end = info.end_time or None
    return RunRow(
        run_id=info.run_id,
        name=info.run_name or "",
        experiment=experiments.get(info.experiment_id, info.experiment_id),
        status=info.status,
        start=datetime.fromtimestamp(info.start_time / 1000) if info.start_time else None,
        duration_s=(end - info.start_time) / 1000 if end and info.start_time else None,
        parent_run_id=run.data.tags.get(TAG_PARENT),
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        driver_gone=info.status == "RUNNING" and driver_gone(run.data.tags),
    )


def _sweep_parents(c, experiment_ids: list[str], sweep: str, uri: str | None) -> list[str]:
    """Run ids of the sweep's parent run(s): ``sweep`` is its run name, or a parent run id
    (full or a unique prefix)."""
    escaped = sweep.replace("'", "\\'")
    parents = c.search_runs(experiment_ids, filter_string=f"attributes.run_name = '{escaped}'")
    if parents or not is_run_ref(sweep):
        return [r.info.run_id for r in parents]
    try:
        return [resolve_run_id(sweep, uri=uri)]
    except LookupError:
        return []


def list_runs(
    experiment: str | None = None,
    sweep: str | None = None,
    *,
    max_results: int = 100,
    uri: str | None = None,
) -> list[RunRow]:
    """Runs, newest first: all experiments, one ``experiment`` (by name), or the trials of one
    ``sweep`` (its parent run's id or name; the trials are its child runs).

    Raises:
        RunLookupError: the experiment or sweep does not exist.
    """
    c = client(uri)
    experiments = {e.experiment_id: e.name for e in c.search_experiments()}
    if experiment is not None:
        ids = [i for i, n in experiments.items() if n == experiment]
        if not ids:
            known = ", ".join(sorted(experiments.values())) or "none"
            raise RunLookupError(
                f"no experiment {experiment!r} in {tracking_uri(uri)} (experiments: {known})"
            )
    else:
        ids = list(experiments)
    if not ids:
        return []
    filters = [""]
    if sweep is not None:
        parents = _sweep_parents(c, ids, sweep, uri)
        if not parents:
            raise RunLookupError(f"no sweep run named {sweep!r} in {tracking_uri(uri)}")
        filters = [f"tags.`{TAG_PARENT}` = '{p}'" for p in parents]
    runs = [
        r
        for f in filters
        for r in c.search_runs(
            ids, filter_string=f, max_results=max_results, order_by=["attributes.start_time DESC"]
        )
    ]
    runs = sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)[:max_results]
    return [_row(r, experiments) for r in runs]


def get_runs(run_ids: list[str], *, uri: str | None = None) -> list[RunRow]:
    """The named runs (full ids or unique prefixes, :mod:`bratslab.tracking.run_ids`), in the
    order given.

    Raises:
        RunLookupError: a run id does not exist (the message names it).
    """
    c = client(uri)
    experiments = {e.experiment_id: e.name for e in c.search_experiments()}
    rows = []
    for ref in run_ids:
        try:
            run_id = resolve_run_id(ref, uri=uri)
        except LookupError as e:
            raise RunLookupError(str(e)) from None
        try:
            rows.append(_row(c.get_run(run_id), experiments))
        except MlflowException:
            raise RunLookupError(f"no run {ref!r} in {tracking_uri(uri)}") from None
    return rows


def differing_keys(dicts: list[dict[str, object]]) -> set[str]:
    """Keys whose value is not the same in every dict (missing counts as a value)."""
    keys = set().union(*dicts) if dicts else set()
    return {k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1}
