"""Submit job specs and ``bratslab`` commands to a Ray cluster through the Ray Jobs SDK.

What travels with a job (its ``runtime_env``):

* ``working_dir`` = the project directory (the repository root by default), so job specs,
  ``search_spaces/`` and the current source reach the cluster. ``.gitignore`` is honoured by
  Ray; :data:`EXCLUDES` also keeps virtualenvs, work directories, data, the README journey's
  outputs and caches out, so the package never carries data: its size is printed, and a
  package over :data:`PACKAGE_WARN_BYTES` is a warning naming its biggest folders.
* paths in the job spec or command line are resolved here, on the submitting machine, into
  what the cluster reads (:mod:`bratslab.jobs.paths`): a job never reads a relative path inside
  its temporary copy of the project.
* ``env_vars``: telemetry off, plus where results go (``MLFLOW_TRACKING_URI``, ``BRATSLAB_HOME``,
  ...) and any ``--env KEY=VALUE``.

The entrypoint is a plain ``bratslab …`` command line. On a real cluster the image has
``bratslab`` installed (infra/docker); against a cluster on this machine (a loopback address) the
job's ``PATH`` is prefixed with this interpreter's ``bin`` folder, so a cluster started from the
project's ``.venv`` runs the same installation even when the venv is not activated.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bratslab.cluster import WORKER_SETUP_HOOK
from bratslab.compat.ray_packaging import biggest_folders, package_files
from bratslab.config import ConfigError
from bratslab.jobs import entrypoint as ep
from bratslab.jobs import paths as jp
from bratslab.jobs.client import Jobs, runs_on_this_machine
from bratslab.settings import get_settings

log = logging.getLogger(__name__)

#: gitignore-style patterns, relative to the working dir (a leading "/" anchors at its root, so
#: "/data" skips a top-level data folder but keeps the ``bratslab/data`` package).
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "/bratslab-work",
    "/data",
    # What the README journey leaves in the folder it ran in (data, predictions, results).
    "/store",
    "/store_*",
    "/raw*",
    "/pred*",
    "/model_dir",
    "/metrics.*",
    "/submission.csv",
    "/postprocess.json",
    "*.npz",
    "/mlruns",
    "/mlartifacts",
    "/.bench",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "*.nii",
    "*.nii.gz",
    "*.npy",
    "*.db",
]

#: Settings forwarded to the job when set on the submitting machine.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "BRATSLAB_HOME",
    "BRATSLAB_ARTIFACTS",
    "BRATSLAB_RAY_CPUS",
    "BRATSLAB_OPTUNA_STORAGE",
    "BRATSLAB_RAY_STORAGE",
)
#: Always set in the job: nothing phones home.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    # `bratslab jobs stop` sends SIGTERM; the run then marks itself KILLED and shuts Ray down,
    # which takes seconds. Ray's default of 3 s before SIGKILL cuts that short.
    "RAY_JOB_STOP_WAIT_TIME_S": "30",
    # The job's driver calls ray.init(runtime_env={"env_vars": ...}) (bratslab.cluster) with
    # keys this job env also sets; Ray refuses such overlaps unless told to merge them. The
    # driver's values come from this very environment, so merging changes nothing.
    "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
}

#: A working-dir package larger than this is a warning (source and specs weigh ~1 MB).
PACKAGE_WARN_BYTES = 5 * 1024 * 1024

# --------------------------------------------------------------------------- job plans


@dataclass
class JobPlan:
    """Everything a submission sends; built (and checked) without contacting the cluster."""

    kind: str
    argv: list[str]
    entrypoint: str
    runtime_env: dict
    submission_id: str
    metadata: dict[str, str]
    #: Bytes of the working_dir package and its heaviest top-level entries.
    package_bytes: int = 0
    package_biggest: list[tuple[str, int]] = field(default_factory=list)

    def package_warning(self) -> str | None:
        """A line naming what makes the package heavy, when it is over the warning size."""
        if self.package_bytes <= PACKAGE_WARN_BYTES:
            return None
        parts = ", ".join(f"{name} ({size / 2**20:.1f} MB)" for name, size in self.package_biggest)
        return (
            f"the job's working_dir package is {self.package_bytes / 2**20:.1f} MB, mostly "
            f"{parts}: add data and outputs to .gitignore or .rayignore, or pass --working-dir"
        )


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd().resolve()


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` → dict; a malformed item is an error naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def job_env(
    address: str, extra: dict[str, str] | None = None, *, same_machine: bool | None = None
) -> dict[str, str]:
    """Environment variables for the job.

    Against a cluster on this machine (``same_machine``; default: :func:`runs_on_this_machine`)
    the resolved work dir and tracking store are passed as absolute paths, so runs land where
    ``bratslab runs list`` looks (the job's cwd is a temporary copy of the project). Against a
    remote cluster only explicitly set variables are forwarded, with a warning when runs would
    end up in a SQLite file on the cluster.
    """
    env = dict(QUIET_ENV)
    if same_machine is None:
        same_machine = runs_on_this_machine(address)
    if same_machine:
        s = get_settings()
        env.update(
            BRATSLAB_HOME=str(s.home),
            MLFLOW_TRACKING_URI=s.tracking_uri,
            BRATSLAB_ARTIFACTS=str(s.artifacts),
            # ${PATH} is expanded by Ray on the cluster side (ray._private.utils.update_envs).
            PATH=f"{Path(sys.executable).parent}:${{PATH}}",
        )
        if os.environ.get("BRATSLAB_RAY_CPUS"):
            env["BRATSLAB_RAY_CPUS"] = os.environ["BRATSLAB_RAY_CPUS"]
        if s.optuna_storage:
            env["BRATSLAB_OPTUNA_STORAGE"] = s.optuna_storage
        if s.ray_storage:
            env["BRATSLAB_RAY_STORAGE"] = str(s.ray_storage)
    else:
        env.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
        uri = env.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            log.warning(
                "MLFLOW_TRACKING_URI is not set here: the job logs wherever the cluster's own "
                "environment says (infra/kuberay sets a tracking server), else to a SQLite file "
                "on the cluster."
            )
        elif not uri.startswith(("http://", "https://", "databricks")):
            log.warning(
                "MLFLOW_TRACKING_URI is %s: the job's runs will stay in a file on the cluster. "
                "Point it at a tracking server (infra/mlflow) to browse them here.",
                uri,
            )
    env.update(extra or {})
    return env


def _submission_id(kind: str, name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "job"
    return f"bratslab-{kind}-{slug}-{stamp}-{secrets.token_hex(2)}"


def _runtime_env(working_dir: Path, env: dict[str, str]) -> dict:
    return {
        "working_dir": str(working_dir),
        "excludes": list(EXCLUDES),
        "env_vars": env,
        # Every worker of the job looks its cluster up by the job's own GCS address.
        "worker_process_setup_hook": WORKER_SETUP_HOOK,
    }


def _package(root: Path) -> tuple[dict[Path, int], Callable[[Path], str | None]]:
    """The files Ray will upload from ``root`` (with their sizes), and a function mapping a
    client path to its path inside that package (None when the package does not carry it)."""
    sizes = package_files(root, EXCLUDES)
    folders = {parent for rel in sizes for parent in rel.parents}

    def packed(path: Path) -> str | None:
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            return None
        return rel.as_posix() if rel in sizes or (rel in folders and rel != Path()) else None

    return sizes, packed


def _plan(
    kind: str,
    argv: list[str],
    root: Path,
    env: dict[str, str],
    name: str,
    metadata: dict,
    sizes: dict[Path, int],
) -> JobPlan:
    return JobPlan(
        kind=kind,
        argv=argv,
        entrypoint=ep.shell_command(argv),
        runtime_env=_runtime_env(root, env),
        submission_id=_submission_id(kind, name),
        metadata=metadata,
        package_bytes=sum(sizes.values()),
        package_biggest=biggest_folders(sizes),
    )


def plan_spec_job(
    spec: Path,
    overrides: Sequence[str] = (),
    *,
    address: str,
    working_dir: Path | None = None,
    env: dict[str, str] | None = None,
    same_machine: bool | None = None,
) -> JobPlan:
    """Plan ``bratslab train|sweep SPEC`` for a job spec inside the uploaded project folder.

    The spec's path-like keys (``data.store``, a folder in ``model.init_from``) are pinned with
    ``--set`` to what the cluster reads (:func:`bratslab.jobs.paths.spec_path_overrides`).

    Raises:
        ConfigError: the spec is invalid (naming the key), lies outside ``working_dir``, or
            names a client-local folder that a remote cluster cannot see.
    """
    spec = Path(spec)
    if not spec.is_file():
        raise ConfigError(f"{spec}: no such job spec")
    kind = ep.spec_kind(spec, overrides)
    root = (working_dir or project_root(spec.parent)).resolve()
    try:
        rel = spec.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"{spec}: the job spec must lie inside the folder uploaded with the job ({root}); "
            "move it under jobs/ or pass --working-dir"
        ) from None
    same = runs_on_this_machine(address) if same_machine is None else same_machine
    pinned = jp.spec_path_overrides(spec, overrides, same_machine=same)
    argv = ep.spec_argv(kind, rel, [*overrides, *pinned])
    env = job_env(address, env, same_machine=same)
    sizes, _ = _package(root)
    return _plan(kind, argv, root, env, spec.stem, {"bratslab_kind": kind, "spec": rel}, sizes)


def plan_command_job(
    argv: Sequence[str],
    *,
    commands,
    address: str,
    working_dir: Path | None = None,
    env: dict[str, str] | None = None,
    same_machine: bool | None = None,
) -> JobPlan:
    """Plan an explicit ``bratslab ARGV`` job, e.g. ``["data", "preprocess", RAW, OUT]``.

    ``commands`` is the ``bratslab`` root click command that ``ARGV`` is checked against
    (:func:`bratslab.jobs.entrypoint.resolve_command`).

    Relative path arguments are made absolute for a cluster on this machine; for a remote one
    they must name something the uploaded package carries (a job spec, a config file) and are
    refused otherwise (:func:`bratslab.jobs.paths.command_path_args`).
    """
    path = ep.resolve_command(commands, argv)
    kind = "-".join(path)
    root = (working_dir or project_root()).resolve()
    same = runs_on_this_machine(address) if same_machine is None else same_machine
    sizes, packed = _package(root)
    args = jp.command_path_args(
        ep.leaf_command(commands, path), argv[len(path) :], same_machine=same, packed=packed
    )
    env = job_env(address, env, same_machine=same)
    return _plan(kind, [*path, *args], root, env, kind, {"bratslab_kind": kind}, sizes)


def submit(jobs: Jobs, plan: JobPlan) -> str:
    """Submit ``plan``; returns the job's submission id."""
    return jobs.call(
        "submit_job",
        entrypoint=plan.entrypoint,
        runtime_env=plan.runtime_env,
        submission_id=plan.submission_id,
        metadata=plan.metadata,
    )
