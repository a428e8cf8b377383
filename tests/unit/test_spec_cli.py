"""`bratslab spec schema|explain`: the job spec documented from its typed configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bratslab.app.main import app
from bratslab.jobs.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _settings(tmp_path, monkeypatch):
    """The CLI exports its settings (pin_settings); set here, they are undone afterwards."""
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_schema_is_the_job_spec_schema_and_describes_every_key():
    r = _cli("spec", "schema")
    assert r.exit_code == 0, r.output
    schema = json.loads(r.stdout)
    assert schema == JobSpec.model_json_schema()
    assert set(schema["required"]) == {"name", "data", "model"}
    assert schema["additionalProperties"] is False  # unknown keys are errors
    lr = schema["$defs"]["OptimizerConfig"]["properties"]["lr"]
    assert lr["description"] == "Base learning rate." and lr["exclusiveMinimum"] == 0


def test_explain_lists_every_key_the_spec_accepts():
    r = _cli("spec", "explain")
    assert r.exit_code == 0, r.output
    heads = [ln.split(":", 1)[0] for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    for key in ("name", "training.optimizer.lr", "sweep.scheduler.kind", "model.mednext.size"):
        assert key in heads, key

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("tags", "group_lr"):  # free-form keys
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    # Every key used by the shipped job specs is documented.
    specs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert len(specs) >= 3
    for spec in specs:
        assert set(leaves(yaml.safe_load(spec.read_text()))) <= set(heads), spec.name


def test_explain_a_subtree_shows_type_default_constraint_and_description():
    r = _cli("spec", "explain", "training.optimizer")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "training.optimizer: section"
    assert all(ln.startswith(("training.optimizer", "    ")) for ln in lines)
    i = lines.index("training.optimizer.lr: float = 0.001  [> 0]")
    assert lines[i + 1] == "    Base learning rate."
    assert 'training.optimizer.name: "adamw" | "sgd" | "schedulefree_adamw" = "adamw"' in lines

    r = _cli("spec", "explain", "name")
    assert r.exit_code == 0 and r.stdout.startswith("name: str (required)  [pattern ^")
    r = _cli("spec", "explain", "sweep")
    assert r.stdout.splitlines()[0] == "sweep: section (optional)"
    assert "sweep.space: str (required)" in r.stdout


def test_unknown_key_exits_2_naming_it_and_what_exists():
    r = _cli("spec", "explain", "training.optimiser.lr")
    assert r.exit_code == 2 and r.stdout == ""
    assert "unknown job-spec key 'training.optimiser.lr'" in r.stderr
    assert "no 'optimiser' under 'training'" in r.stderr and "optimizer" in r.stderr
    r = _cli("spec", "explain", "training.epochs.x")
    assert r.exit_code == 2 and "no 'x' under 'training.epochs'" in r.stderr
