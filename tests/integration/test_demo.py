"""`bratslab demo`, reduced (fewer, smaller cases; shorter trials), end to end on the shared
local Ray instance and the session's SQLite MLflow store."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from bratslab.cli import app
from bratslab.tracking import mlflow_runs, registry

pytestmark = pytest.mark.integration


def test_reduced_demo_runs_the_whole_pipeline(ray_cluster, bratslab_home):
    out = bratslab_home / "demo"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--cases", "6",
            "--holdout", "1",
            "--shape", "64", "64", "48",
            "--out", str(out),
            "--set", "training.epochs=2",
            "--set", "training.steps_per_epoch=2",
            "--set", "sweep.registry_name=bratslab-demo-it",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)

    # the held-out case was predicted in source geometry and scored per region
    assert len(list((out / "pred").glob("*.nii.gz"))) == 1
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["region"] for r in rows) == ["et", "tc", "wt"]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)

    # the champion is registered, and the trials compared all three architectures
    champion = registry.get_version("bratslab-demo-it", alias="champion")
    assert "tta/dice_mean" in champion.tags
    assert "architecture" in result.output
    for arch in ("unet", "segresnet", "mednext"):
        assert arch in result.output

    # the report PNG is on disk and logged to the sweep's parent run
    report = out / "report.png"
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = mlflow_runs.run_info(champion.run_id)["tags"]["mlflow.parentRunId"]
    names = [a.path for a in mlflow_runs.client().list_artifacts(parent, "report")]
    assert names == ["report/report.png"]
