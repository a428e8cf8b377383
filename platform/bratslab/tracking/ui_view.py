"""The runs view ``bratslab ui`` opens on: the Dice columns shown without a trip through MLflow's
column picker.

MLflow's UI keeps the columns a user picked in the browser only, so a first visit shows no
metric at all. It also reads a *shared view*: an experiment tag ``mlflow.sharedViewState.<key>``
holding the page's state as JSON, applied when the URL carries ``?viewStateShareKey=<key>``
(what its "Share" button writes). ``bratslab ui`` writes one such view per experiment, with the
key metrics that experiment's runs logged, and prints the URL that opens it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

SHARE_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI: a shared view's experiment tag
SHARE_URL_PARAM = "viewStateShareKey"
# MLflow 3's sidebar mode; without it a first visit opens the GenAI mode (traces, assistant).
WORKFLOW_PARAM = "workflowType=machine_learning"
VIEW_KEY = "bratslab-runs"
RUNS_SCANNED = 1000  # enough to see every metric a sweep's trials log

# Region suffixes in reading order: BraTS 2021/2023 first, then the other profiles' regions.
REGION_ORDER = ("wt", "tc", "et", "rc", "cc", "netc", "snfh", "ncr", "ed")
# Each entry: the keys that can fill one column, the first one logged wins (a run logs ``best/``
# only once an epoch validated; older runs and tests may carry the plain validation key).
MEANS = (
    ("best/tta/lesion_dice_mean",),  # a sweep's parent run: its winner's TTA scores
    ("best/tta/dice_mean",),
    ("tta/lesion_dice_mean",),
    ("tta/dice_mean",),
    ("best/val/lesion_dice_mean", "val/lesion_dice_mean"),
    ("best/val/dice_mean", "val/dice_mean"),
)
PER_REGION = (("tta/lesion_dice_",), ("tta/dice_",), ("val/lesion_dice_",))
PER_REGION += (("best/val/dice_", "val/dice_"),)


def _region_rank(region: str) -> tuple[int, str]:
    if region in REGION_ORDER:
        return REGION_ORDER.index(region), ""
    return len(REGION_ORDER), region  # unknown regions last, alphabetically


def key_metrics(logged: Iterable[str]) -> list[str]:
    """The metric columns to show, in order, out of the metric keys an experiment's runs logged:
    the means (a sweep winner's TTA lesion-wise and voxel Dice on the sweep's own run, each
    trial's TTA ones, then the best validation epoch's), then per region the
    TTA lesion-wise and voxel Dice, the last validation's lesion-wise Dice and the best epoch's
    voxel Dice (the last validation's where a run has no ``best/``). Keys not logged are left
    out (a training experiment has no ``tta/``)."""
    keys = set(logged)
    shown = [next(k for k in group if k in keys) for group in MEANS if keys.intersection(group)]
    for prefixes in PER_REGION:
        regions: dict[str, str] = {}
        for prefix in reversed(prefixes):  # the preferred prefix last, so it wins
            for k in keys:
                if k.startswith(prefix) and not k.endswith("_mean"):
                    regions[k[len(prefix) :]] = k
        shown += [regions[r] for r in sorted(regions, key=_region_rank)]
    return shown


def view_state(metrics: list[str]) -> dict:
    """The shared view's JSON: MLflow's default columns (source, logged models) plus
    ``metrics``; everything else (filter, order, charts) stays MLflow's default."""
    columns = ["attributes.`Source`", "attributes.`Models`"]
    return {"selectedColumns": columns + [f"metrics.`{k}`" for k in metrics]}


def write_views(client) -> dict[str, list[str]]:
    """Write (or refresh) the bratslab view on every active experiment that has runs; returns
    each such experiment's id with the metric columns its view shows."""
    written = {}
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], max_results=RUNS_SCANNED)
        if not runs:
            continue
        metrics = key_metrics(k for run in runs for k in run.data.metrics)
        value = json.dumps(view_state(metrics), separators=(",", ":"))
        if (exp.tags or {}).get(SHARE_TAG_PREFIX + VIEW_KEY) != value:
            client.set_experiment_tag(exp.experiment_id, SHARE_TAG_PREFIX + VIEW_KEY, value)
        written[exp.experiment_id] = metrics
    return written


def runs_page(base: str, experiment_id: str) -> str:
    """The URL of an experiment's runs table opened on the bratslab view."""
    query = f"{SHARE_URL_PARAM}={VIEW_KEY}&{WORKFLOW_PARAM}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"
