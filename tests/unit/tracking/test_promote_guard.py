"""`bratslab models promote` refuses a version whose selection metric is missing or not
finite (an unevaluated or diverged model) unless --force."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

NAME = "guard-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Versions: 1 tta/dice_mean 0.8; 2 none; 3 nan; 4 a sweep's (val/dice_mean 0.7 as its
    selection metric). Plain artifact folders: no logged model needed here."""
    from bratslab.tracking import mlflow_runs

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    c = mlflow_runs.client()
    c.create_registered_model(NAME)
    for i, tags in enumerate(
        (
            {"tta/dice_mean": "0.8"},
            {},
            {"tta/dice_mean": "nan"},
            {"bratslab.selection_metric": "val/dice_mean", "val/dice_mean": "0.7"},
        ),
        start=1,
    ):
        art = tmp_path / f"art{i}"
        art.mkdir()
        c.create_model_version(NAME, source=art.as_uri(), tags=tags)


def _promote(*args):
    from bratslab.app.main import app

    return CliRunner().invoke(app, ["models", "promote", NAME, *args], env={"COLUMNS": "200"})


def test_promote_refuses_a_version_without_a_finite_selection_metric(store):
    from bratslab.tracking import registry

    r = _promote("1", "--alias", "champion")
    assert r.exit_code == 0 and f"{NAME}@champion -> version 1" in r.stdout
    r = _promote("2", "--alias", "champion")
    assert r.exit_code == 2
    assert "version 2: no finite value for metric 'tta/dice_mean' (is missing)" in r.stderr
    assert "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _promote("3", "--alias", "champion")
    assert r.exit_code == 2
    assert "version 3: no finite value for metric 'tta/dice_mean' (is nan)" in r.stderr
    r = _promote("3", "--alias", "champion", "--if-better", "tta/dice_mean")
    assert r.exit_code == 2 and "(is nan); refusing to point alias 'champion'" in r.stderr
    assert registry.get_version(NAME, alias="champion").version == "1"  # unchanged
    r = _promote("4", "--alias", "champion")  # its own selection metric is set: accepted
    assert r.exit_code == 0, r.output
    r = _promote("2", "--alias", "champion", "--force")
    assert r.exit_code == 0, r.output
    assert registry.get_version(NAME, alias="champion").version == "2"
