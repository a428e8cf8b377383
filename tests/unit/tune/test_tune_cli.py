"""``bratslab sweep`` rejects a malformed space before any trial runs, naming the parameter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def _job(tmp_path: Path, space: dict) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    job = yaml.safe_load((ROOT / "jobs/sweep_smoke.yaml").read_text())
    job["sweep"]["space"] = str(tmp_path / "space.yaml")
    job["sweep"]["name"] = "bad"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _sweep(job: Path, home: Path, monkeypatch, capsys) -> tuple[int, str]:
    """Run the console entry point in-process: ``bratslab sweep JOB``; (exit code, stderr)."""
    from bratslab.app.main import main

    monkeypatch.setenv("BRATSLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/m.db")
    monkeypatch.setattr(sys, "argv", ["bratslab", "sweep", str(job)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_malformed_space_file_fails_naming_the_parameter(tmp_path, monkeypatch, capsys):
    bad_range = {"parameters": {"training.optimizer.lr": {"type": "loguniform", "low": -1}}}
    code, err = _sweep(_job(tmp_path, bad_range), tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert "parameter 'training.optimizer.lr'" in err
    assert "low: Input should be greater than 0" in err
    assert "high: Field required" in err
    # nothing was created: no sweep folder, no MLflow run
    assert not (tmp_path / "sweeps" / "bad").exists()
    assert not (tmp_path / "m.db").exists()


def test_parameter_unknown_to_the_job_fails_before_any_trial(tmp_path, monkeypatch):
    from bratslab.config import ConfigError
    from bratslab.jobs.spec import JobSpec, load_job
    from bratslab.tune.sweep import resume_sweep, start_sweep

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    typo = {"parameters": {"training.optimiser.lr": {"type": "choice", "values": [0.1]}}}
    job = _job(tmp_path, typo)
    with pytest.raises(ConfigError) as err:
        start_sweep(load_job(job), job_source=str(job))
    assert "parameter 'training.optimiser.lr' = 0.1 does not fit" in str(err.value)
    assert "training.optimiser: unknown key" in str(err.value)
    assert not (tmp_path / "sweeps" / "bad").exists()
    assert not (tmp_path / "m.db").exists()  # no MLflow run was opened
    with pytest.raises(ConfigError, match="no sweep named 'nope'"):
        resume_sweep("nope", job_type=JobSpec)


def test_grace_period_beyond_epochs_fails_before_any_trial(tmp_path, monkeypatch):
    from bratslab.config import ConfigError
    from bratslab.jobs.spec import load_job
    from bratslab.tune.sweep import start_sweep

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    job = _job(tmp_path, yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text()))
    spec = load_job(job, ["sweep.scheduler.grace_period=5"])  # the job trains 2 epochs
    with pytest.raises(ConfigError, match=r"grace_period \(5\) exceeds max_t \(2"):
        start_sweep(spec, job_source=str(job))
    assert not (tmp_path / "m.db").exists()
    assert not (tmp_path / "sweeps" / "bad").exists()


def _stored_sweep(home: Path, name: str, space: dict, **manifest) -> Path:
    """A sweep folder as `start_sweep` leaves it (manifest + space copy), without running it."""
    from bratslab.jobs.spec import load_job

    root = home / "sweeps" / name
    root.mkdir(parents=True)
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    job = load_job(ROOT / "jobs/sweep_smoke.yaml", [f"sweep.name={name}"]).resolved()
    data = {"format": "bratslab-sweep/1", "name": name, "job": job, "parent_run_id": None}
    data.update({"space_file": str(root / "space.yaml"), **manifest})
    (root / "sweep.json").write_text(json.dumps(data))
    return root


def test_resume_checks_the_stored_sweep_before_any_run(tmp_path, monkeypatch):
    from bratslab.config import ConfigError
    from bratslab.jobs.spec import JobSpec, load_job
    from bratslab.tune.sweep import resume_sweep, start_sweep

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    smoke = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    _stored_sweep(tmp_path, "done", smoke, finished={"winner_trial": "t1"})
    with pytest.raises(ConfigError, match="'done' already finished"):
        resume_sweep("done", job_type=JobSpec)
    with pytest.raises(ConfigError, match="not a valid name"):  # never a path outside sweeps/
        resume_sweep("../done", job_type=JobSpec)
    typo = {"parameters": {"training.optimiser.lr": {"type": "choice", "values": [0.1]}}}
    stored = _stored_sweep(tmp_path, "drifted", typo)
    with pytest.raises(ConfigError, match=f"does not fit {stored / 'sweep.json'}"):
        resume_sweep("drifted", job_type=JobSpec)
    with pytest.raises(ConfigError, match=r"no sweep named 'x' .*known: done, drifted\)"):
        resume_sweep("x", job_type=JobSpec)
    # starting a sweep under a name that exists points at --resume
    spec = load_job(ROOT / "jobs/sweep_smoke.yaml", ["sweep.name=done"])
    with pytest.raises(ConfigError, match="continue it with --resume done"):
        start_sweep(spec, job_source=str(ROOT / "jobs/sweep_smoke.yaml"))
    assert not (tmp_path / "m.db").exists()  # no MLflow run was opened
