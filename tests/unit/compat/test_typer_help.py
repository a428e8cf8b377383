"""Every help page reads like a command line: flags bare, usage in the click style."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from bratslab.app.main import app


def _commands(group, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (Typer 0.29 carries its own copy of click)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name)


COMMANDS = sorted(_commands(get_command(app)))


def test_every_command_is_checked():
    assert len(COMMANDS) > 30 and ("train",) in COMMANDS and ("runs", "compare") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_shows_flags_bare_and_arguments_in_capitals(path):
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "<list[" not in r.output, r.output
    usage = next(ln for ln in r.output.splitlines() if "Usage:" in ln)
    assert "{" not in usage and "}" not in usage, usage


def test_usage_names_arguments_as_click_does():
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    assert (
        "Usage: bratslab train [OPTIONS] JOB"
        in CliRunner().invoke(app, ["train", "--help"], env=env).output
    )
    out = CliRunner().invoke(app, ["runs", "compare", "--help"], env=env).output
    assert "[OPTIONS] RUN_IDS..." in out
    out = CliRunner().invoke(app, ["predict", "--help"], env=env).output
    assert "--no-amp   " in out and "<float>" in out  # a flag has no type; a value has one


@pytest.mark.parametrize("command", ["train", "sweep", "predict", "evaluate", "evaluate-model"])
def test_run_commands_show_examples_of_themselves(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    lines = out.split("Examples:", 1)[1].split()
    assert lines.count("bratslab") >= 1 and all(
        w == command for i, w in enumerate(lines[1:], 1) if lines[i - 1] == "bratslab"
    ), out
