"""``bratslab submit`` and ``bratslab jobs …``: run work on a Ray cluster and watch it.

Thin: parses, calls :mod:`bratslab.jobs.submit`, prints. Ray is imported inside the commands.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

ADDRESS_HELP = (
    "Ray dashboard URL (Jobs API). Default: $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, "
    "or http://127.0.0.1:8265."
)

jobs_app = typer.Typer(
    help="List, inspect, follow and stop jobs on a Ray cluster.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``submit`` and the ``jobs`` group to the root app."""
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def _failed(error: Exception) -> None:
    """Exit for a Jobs API error: 2 when the job named does not exist, 1 otherwise."""
    from bratslab.jobs.client import JobNotFound

    _fail(str(error), 2 if isinstance(error, JobNotFound) else 1)


def _waiting(message: str) -> None:
    typer.secho(f"  {message}…", err=True)


def _connect(address: str | None, wait_s: float | None = None):
    from bratslab.config import ConfigError
    from bratslab.jobs.client import JobsError, connect

    try:
        return connect(address, wait_s=wait_s, on_wait=_waiting)
    except ConfigError as e:
        _fail(str(e), 2)
    except JobsError as e:
        _failed(e)


def _exit_for(status: str, jobs=None, job_id: str | None = None, tail: int = 40) -> None:
    """Report the final status; after a failure also the job's message and last log lines."""
    color = "green" if status == "SUCCEEDED" else "red"
    if status != "SUCCEEDED" and jobs is not None and job_id:
        from bratslab.jobs.client import JobsError

        try:
            info = jobs.call("get_job_info", job_id)
            lines = jobs.call("get_job_logs", job_id).rstrip().splitlines()
        except JobsError:
            info, lines = None, []
        if lines:
            typer.secho(f"--- last {min(tail, len(lines))} log lines of {job_id}:", err=True)
            typer.echo("\n".join(lines[-tail:]), err=True)
        if info is not None and info.message:
            typer.secho(f"--- {info.message}", err=True)
    typer.secho(f"job finished: {status}", fg=color, err=True)
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


def _quiet_ray_client_logs() -> None:
    """The SDK logs every file it leaves out of the upload; keep errors only."""
    import logging

    if logging.getLogger().level > logging.DEBUG:
        for name in ("ray", "ray.dashboard", "ray._private.runtime_env"):
            logging.getLogger(name).setLevel(logging.ERROR)


def submit(
    ctx: typer.Context,
    target: list[str] = typer.Argument(
        ...,
        metavar="JOB.yaml | -- COMMAND...",
        help="A job spec (runs `bratslab train SPEC`, or `bratslab sweep SPEC` when it has a "
        "sweep section), or after `--` any bratslab command line, e.g. "
        "`-- data preprocess /data/raw /data/store` or `-- predict --model ... --input ... "
        "--output ...`. Paths are as the cluster sees them.",
    ),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a job-spec value, key.sub=value (repeatable)."
    ),
    env: list[str] = typer.Option(
        [], "--env", help="Extra environment variable for the job, KEY=VALUE (repeatable)."
    ),
    working_dir: Path | None = typer.Option(
        None,
        "--working-dir",
        help="Folder uploaded as the job's working directory (default: the project root "
        "holding pyproject.toml).",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Block until the job ends; exit 1 unless it SUCCEEDED."
    ),
    follow: bool = typer.Option(
        False, "--follow", help="Stream the job's logs until it ends (implies --wait)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: give up waiting after this many seconds."
    ),
    share_store: bool | None = typer.Option(
        None,
        "--share-store/--no-share-store",
        help="Give the job this machine's work dir and MLflow store (absolute paths). Default: "
        "only when the cluster runs on this machine (a Ray dashboard behind a loopback "
        "address, not a port-forward or SSH tunnel).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the entrypoint and runtime environment; submit nothing."
    ),
    head_wait: float | None = typer.Option(
        None,
        "--head-wait",
        min=0,
        help="Seconds to wait for a head that is still starting (connection refused, no job "
        "agent yet). Default: $BRATSLAB_HEAD_WAIT_S or 60.",
    ),
) -> None:
    """Submit a job spec or a bratslab command to a Ray cluster and print the job id.

    Authenticates with the Ray token from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token when one exists.
    """
    from bratslab.jobs import client as jc
    from bratslab.jobs import submit as sj

    try:
        url = jc.resolve_address(address)
        plan = _plan(ctx, target, url, overrides, sj.parse_env(env), working_dir, share_store)
    except jc.JobsError as e:
        _failed(e)
    if dry_run:
        _print_plan(url, plan)
        return
    size = plan.package_bytes
    shown = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"
    typer.secho(f"  uploading {plan.runtime_env['working_dir']} ({shown})", err=True)
    if plan.package_warning():
        typer.secho(f"  warning: {plan.package_warning()}", fg="yellow", err=True)
    jobs = _connect(url, head_wait)
    _quiet_ray_client_logs()
    try:
        job_id = sj.submit(jobs, plan)
    except jc.JobsError as e:
        _failed(e)
    typer.echo(job_id)
    typer.secho(
        f"submitted {plan.kind} job to {url}: {plan.entrypoint}\n"
        f"  follow: bratslab jobs logs {job_id} --follow",
        err=True,
    )
    try:
        if follow:
            _exit_for(jc.follow(jobs, job_id))
        if wait:
            status = jc.wait(
                jobs,
                job_id,
                timeout_s=timeout,
                on_change=lambda s: typer.secho(f"  {job_id}: {s}", err=True),
            )
            _exit_for(status, jobs, job_id)
    except jc.JobsError as e:
        _failed(e)


def _plan(ctx: typer.Context, target: list[str], url: str, overrides, env, working_dir, share):
    """The job plan of ``bratslab submit TARGET``: a job spec, or a command line checked
    against this very CLI (the root command of ``ctx``)."""
    from bratslab.jobs import submit as sj

    if len(target) == 1 and target[0].endswith((".yaml", ".yml")):
        return sj.plan_spec_job(
            Path(target[0]),
            overrides,
            address=url,
            working_dir=working_dir,
            env=env,
            same_machine=share,
        )
    if overrides:
        _fail("--set applies to job specs; put options of a command after `--`", 2)
    return sj.plan_command_job(
        target,
        commands=ctx.find_root().command,
        address=url,
        working_dir=working_dir,
        env=env,
        same_machine=share,
    )


def _print_plan(url: str, plan) -> None:
    """``submit --dry-run``: what would be sent, as JSON on stdout."""
    typer.echo(
        json.dumps(
            {
                "address": url,
                "submission_id": plan.submission_id,
                "entrypoint": plan.entrypoint,
                "runtime_env": plan.runtime_env,
                "metadata": plan.metadata,
                "package_bytes": plan.package_bytes,
            },
            indent=2,
        )
    )


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    end = end_ms or datetime.now().timestamp() * 1000
    return f"{(end - start_ms) / 1000:.0f} s"


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat() if ms else None


def job_rows(details) -> list[dict]:
    """Ray ``JobDetails`` → plain dicts, newest first: what ``jobs list --json`` prints.

    Times are ISO 8601 with the local offset; ``duration_s`` runs to now for a job still
    running and is None for one not started.
    """
    rows = []
    for d in sorted(details, key=lambda d: d.start_time or 0, reverse=True):
        end = d.end_time or datetime.now().timestamp() * 1000
        rows.append(
            {
                "submission_id": d.submission_id,
                "job_id": d.job_id,
                "kind": (d.metadata or {}).get("bratslab_kind"),
                "status": str(getattr(d.status, "value", d.status)),
                "start_time": _iso(d.start_time),
                "end_time": _iso(d.end_time),
                "duration_s": round((end - d.start_time) / 1000, 3) if d.start_time else None,
                "entrypoint": d.entrypoint,
                "message": d.message,
                "metadata": dict(d.metadata or {}),
            }
        )
    return rows


@jobs_app.command("list")
def list_jobs(
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table."),
) -> None:
    """Jobs submitted to the cluster, newest first."""
    from rich.console import Console
    from rich.table import Table

    from bratslab.jobs.client import JobsError

    jobs = _connect(address)
    try:
        details = jobs.call("list_jobs")
    except JobsError as e:
        _failed(e)
    if as_json:
        typer.echo(json.dumps(job_rows(details), indent=2))
        return
    table = Table(title=f"Ray jobs at {jobs.address}")
    for col in ("submission id", "kind", "status", "started", "duration", "entrypoint"):
        table.add_column(col, overflow="fold")
    for d in sorted(details, key=lambda d: d.start_time or 0, reverse=True):
        table.add_row(
            d.submission_id or d.job_id or "-",
            (d.metadata or {}).get("bratslab_kind", "-"),
            str(d.status),
            _when(d.start_time),
            _duration(d.start_time, d.end_time),
            d.entrypoint or "-",
        )
    Console().print(table)


@jobs_app.command("status")
def status(
    job_id: str = typer.Argument(..., help="Submission id printed by `bratslab submit`."),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """A job's status and message; exit 0 when SUCCEEDED or still running, 1 otherwise."""
    from bratslab.jobs.client import JobsError

    jobs = _connect(address)
    try:
        info = jobs.call("get_job_info", job_id)
    except JobsError as e:
        _failed(e)
    typer.echo(f"{job_id}: {info.status}")
    if info.message:
        typer.echo(f"  {info.message}")
    typer.echo(f"  entrypoint: {info.entrypoint}")
    typer.echo(
        f"  started: {_when(info.start_time)}  ({_duration(info.start_time, info.end_time)})"
    )
    if str(info.status) in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@jobs_app.command("logs")
def logs(
    job_id: str = typer.Argument(..., help="Submission id printed by `bratslab submit`."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Keep streaming until the job ends; exit 1 unless it SUCCEEDED.",
    ),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Print a job's driver logs (stdout and stderr of its entrypoint)."""
    from bratslab.jobs import client as jc

    jobs = _connect(address)
    try:
        if follow:
            _exit_for(jc.follow(jobs, job_id))
        typer.echo(jobs.call("get_job_logs", job_id), nl=False)
    except jc.JobsError as e:
        _failed(e)


@jobs_app.command("stop")
def stop(
    job_id: str = typer.Argument(..., help="Submission id printed by `bratslab submit`."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job has stopped."),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Stop a running job (SIGTERM to its entrypoint, then SIGKILL after Ray's grace period)."""
    from bratslab.jobs import client as jc

    jobs = _connect(address)
    try:
        stopped = jobs.call("stop_job", job_id)
        if not stopped:
            typer.echo(f"{job_id} had already ended: {jobs.call('get_job_status', job_id)}")
            return
        final = jc.wait(jobs, job_id, poll_s=0.5, timeout_s=60) if wait else "stopping"
    except jc.JobsError as e:
        _failed(e)
    typer.echo(f"{job_id}: {final}")
