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


def test_a_missing_store_fails_before_any_trial(tmp_path, monkeypatch, capsys):
    """Every trial would fail on it (each with the same traceback in the log): exit 2 at once,
    naming the paths tried, and nothing created."""
    monkeypatch.chdir(tmp_path)
    job = _job(tmp_path, yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text()))
    code, err = _sweep(job, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert f"{job}: data.store 'store': no such store (looked for {tmp_path / 'store'}" in err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


def test_a_trial_error_is_one_line_naming_what_the_trial_raised():
    """Tune hands a failed trial's error over as Ray's task error, whose text is the remote
    traceback in terminal colours; the table's line names the exception the trial raised."""
    from ray.exceptions import RayTaskError

    from bratslab.config import ConfigError
    from bratslab.tune.tuner import trial_error

    raised = ConfigError("data.store 'x': no such store")
    wrapped = RayTaskError("ImplicitFunc.train", "\x1b[36mTraceback ...\x1b[39m", raised)
    assert trial_error(wrapped.as_instanceof_cause()) == (
        "ConfigError: data.store 'x': no such store"
    )
    assert trial_error(FileNotFoundError("/m: not a model directory")) == (
        "FileNotFoundError: /m: not a model directory"
    )


def test_a_sweep_whose_every_trial_failed_exits_1_with_their_reasons(tmp_path, monkeypatch, capsys):
    """The table, each failed trial's reason, then exit 1 (the request was fine, the work
    failed); a sweep with a completed trial beside a failed one exits 0. (The sweep itself is
    replaced by its outcome: real sweeps run in the integration tests.)"""
    import bratslab.tune.sweep as sweep_module
    from bratslab.app.main import main
    from bratslab.tune.sweep_run import SweepOutcome
    from bratslab.tune.trial_result import TrialResult

    failed = TrialResult("t1", status="ERROR", error="FileNotFoundError: /m: not a model")
    done = TrialResult("t2", completed=True, iterations=2, best_metric=0.5)
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bratslab", "sweep", str(ROOT / "jobs/sweep_smoke.yaml")])
    for rows, want in (([failed], 1), ([failed, done], 0)):
        outcome = SweepOutcome("s", tmp_path, "run", rows, interrupted=False)
        monkeypatch.setattr(sweep_module, "start_sweep", lambda spec, job_source, o=outcome: o)
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr().out
        assert code == want, out
        assert "trial t1 failed: FileNotFoundError: /m: not a model" in out
        assert ("sweep s: every trial failed" in out) == (want == 1), out
