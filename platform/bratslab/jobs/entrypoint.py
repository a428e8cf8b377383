"""What a submitted job runs: a real ``bratslab`` command line, checked against the CLI itself.

A job spec (``jobs/*.yaml``) maps to ``bratslab train SPEC`` or, when it has a ``sweep`` section,
``bratslab sweep SPEC``; any other stage (``data preprocess``, ``predict``, ``evaluate-model``…)
is submitted as an explicit command line. Either way the command is resolved against the CLI's
registered commands before anything reaches the cluster, so a typo fails here, not after the
runtime environment has been uploaded.

The command tree is passed in (``commands``: the root click command of ``bratslab``, which
``bratslab submit`` takes from its own context), so job submission never imports the
application that sits above it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from bratslab.config import ConfigError
from bratslab.jobs.spec import load_job

#: Commands that only make sense on the submitting machine (they talk to the cluster or serve a UI).
LOCAL_ONLY = frozenset({("submit",), ("jobs",), ("ui",)})


def _subcommands(cmd) -> dict | None:
    """A group's sub-commands, or None for a leaf command. (Typer >= 0.25 vendors its own click,
    so groups are recognised by shape rather than by ``isinstance(cmd, click.Group)``.)"""
    commands = getattr(cmd, "commands", None)
    return commands if isinstance(commands, dict) else None


def command_names(commands) -> set[tuple[str, ...]]:
    """Every leaf command under ``commands`` (the root click command) as a path, e.g.
    ``("data", "preprocess")``."""
    names: set[tuple[str, ...]] = set()

    def walk(cmd, prefix: tuple[str, ...]) -> None:
        subs = _subcommands(cmd)
        if subs is None:
            names.add(prefix)
        for name, sub in (subs or {}).items():
            walk(sub, (*prefix, name))

    walk(commands, ())
    return names


def resolve_command(commands, argv: Sequence[str]) -> tuple[str, ...]:
    """The command path that ``bratslab ARGV`` would run (options and arguments stripped), looked
    up in ``commands`` (the root click command).

    Raises:
        ConfigError: ``argv`` does not start with a ``bratslab`` command, or names a command
            that only runs on the submitting machine (``submit``, ``jobs``, ``ui``).
    """
    cmd = commands
    path: tuple[str, ...] = ()
    for token in argv:
        subs = _subcommands(cmd)
        if subs is None:
            break
        sub = subs.get(token)
        if sub is None:
            choices = ", ".join(sorted(subs)) or "none"
            where = "bratslab " + " ".join(path) if path else "bratslab"
            raise ConfigError(f"{token!r} is not a command of `{where}` (choose from: {choices})")
        cmd, path = sub, (*path, token)
    if not path or _subcommands(cmd) is not None:
        raise ConfigError(f"`bratslab {' '.join(argv)}` does not name a command to run")
    if path[:1] in LOCAL_ONLY:
        raise ConfigError(f"`bratslab {' '.join(path)}` runs on your machine, not as a cluster job")
    return path


def leaf_command(commands, path: Sequence[str]):
    """The click command object at ``path`` (as returned by :func:`resolve_command`)."""
    cmd = commands
    for token in path:
        cmd = _subcommands(cmd)[token]
    return cmd


def spec_kind(spec_path: Path, overrides: Sequence[str] = ()) -> str:
    """``"sweep"`` for a job spec with a ``sweep`` section, otherwise ``"train"``.

    The spec is validated with the job-spec loader (:func:`bratslab.jobs.spec.load_job`) so an
    invalid key fails on the submitting machine, naming the key.
    """
    spec = load_job(spec_path, list(overrides))
    return "sweep" if getattr(spec, "sweep", None) is not None else "train"


def spec_argv(kind: str, spec_relpath: str, overrides: Sequence[str] = ()) -> list[str]:
    """``bratslab`` arguments running a job spec: ``[kind, SPEC, --set k=v, ...]``."""
    argv = [kind, spec_relpath]
    for item in overrides:
        argv += ["--set", item]
    return argv


def shell_command(argv: Sequence[str], executable: str = "bratslab") -> str:
    """The entrypoint string (Ray runs it with ``sh -c``), every argument shell-quoted."""
    return shlex.join([executable, *argv])
