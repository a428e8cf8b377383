"""The exit-code table (README, "Exit status"), command by command: bad usage and anything named
that does not exist exit 2 with one line naming it, work that failed exits 1; never a traceback.

Every command of the CLI must appear in ``USAGE_OR_NOT_FOUND`` (the first test fails on a new
command without a row). Exit 1 is checked here where it is cheap (a broken case, a cluster that
cannot be reached); the integration tests check it for training, prediction and jobs.
"""

from __future__ import annotations

import gzip
import sys

import pytest
from typer.main import get_command

from bratslab.app.main import app, main

NOPE = "/nonexistent/bratslab-nothing"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there

# command → (arguments, a fragment the one-line error must contain); all exit 2.
USAGE_OR_NOT_FOUND = {
    "arch describe": (["nope"], "unknown arch 'nope'"),
    "data fingerprint": ([NOPE], NOPE),
    "data preprocess": ([NOPE, "out"], NOPE),
    "data profiles": (["--bogus"], "--bogus"),
    "data synth": (["out", "--cases", "0"], "--cases"),
    "data validate": ([NOPE], NOPE),
    "demo": (["--bogus"], "--bogus"),
    "evaluate": (["--pred", NOPE, "--ref", NOPE], NOPE),
    "evaluate-model": (["--model", NOPE, "--store", NOPE], NOPE),
    "export rle": ([NOPE, "out.csv"], NOPE),
    "jobs list": (["--bogus"], "--bogus"),
    "jobs logs": ([], "JOB_ID"),
    "jobs status": ([], "JOB_ID"),
    "jobs stop": ([], "JOB_ID"),
    "models compare-ensemble": ([NOPE, "--member", NOPE], "--member"),
    "models download": (["nope@champion", "dst"], "'nope'"),
    "models list": (["--bogus"], "--bogus"),
    "models promote": (["nope", "1"], "'nope'"),
    "models register": (["0123456789abcdef", "--name", "x"], "0123456789abcdef"),
    "models show": (["nope"], "'nope'"),
    "postprocess apply": ([NOPE, "outd", "--config", NOPE + ".json"], NOPE),
    "postprocess fit": (["--model", NOPE, "--store", NOPE], NOPE),
    "recipe ssa": (["--finetune-job", NOPE + ".yaml"], NOPE),
    "predict": (["--model", NOPE, "--input", NOPE, "--output", "po"], NOPE),
    "runs compare": (["abcd1234", "abcd9999"], "abcd1234"),
    "runs list": (["--experiment", "nope"], "'nope'"),
    "spec explain": (["nope.key"], "'nope.key'"),
    "spec schema": (["--bogus"], "--bogus"),
    "submit": ([NOPE + ".yaml"], NOPE),
    "sweep": ([NOPE + ".yaml"], NOPE),
    "train": ([NOPE + ".yaml"], NOPE),
    "ui": (["--port", "99999"], "--port"),
}


def _commands(group, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name))


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run a command through the console script's entry point (``main``: it turns a config
    error into exit 2), in-process, in an empty folder with its own (empty) bratslab home;
    returns the exit code and everything printed."""
    monkeypatch.chdir(tmp_path)
    for key, value in {
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "BRATSLAB_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
        "BRATSLAB_HEAD_WAIT_S": "0",  # an unreachable cluster is not a starting one
    }.items():
        monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["bratslab", *argv])
        with pytest.raises(SystemExit) as stop:
            main()
        printed = capsys.readouterr()
        return stop.value.code, printed.out + printed.err

    return run


def test_every_command_has_a_row():
    assert sorted(_commands(get_command(app))) == sorted(USAGE_OR_NOT_FOUND)


@pytest.mark.parametrize("command", sorted(USAGE_OR_NOT_FOUND))
def test_usage_errors_and_things_not_found_exit_2(cli, command):
    args, fragment = USAGE_OR_NOT_FOUND[command]
    code, printed = cli(*command.split(), *args)
    assert code == 2, printed
    assert fragment in printed, printed
    assert "Traceback" not in printed


@pytest.mark.parametrize("command", ["jobs list", "jobs status", "jobs logs", "jobs stop"])
def test_a_cluster_that_cannot_be_reached_is_work_that_failed(cli, command):
    """The request was fine; the cluster was not there: exit 1, naming the address."""
    job = [] if command == "jobs list" else ["raysubmit_x"]
    code, printed = cli(*command.split(), *job, "--address", UNREACHABLE)
    assert code == 1, printed
    assert "cannot reach the Ray dashboard at " + UNREACHABLE in printed
    assert "Traceback" not in printed


def test_a_broken_case_is_work_that_failed(cli, tmp_path):
    """`data validate` on a folder whose only case has unreadable images: exit 1, the case and
    the problem named."""
    case = tmp_path / "raw" / "BraTS-GLI-00000-000"
    case.mkdir(parents=True)
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        with gzip.open(case / f"BraTS-GLI-00000-000-{suffix}.nii.gz", "wb") as f:
            f.write(b"not a NIfTI header")
    code, printed = cli("data", "validate", str(tmp_path / "raw"))
    assert code == 1, printed
    assert "BraTS-GLI-00000-000" in printed
    assert "Traceback" not in printed
