"""Commands of the tune stage: ``bratslab sweep JOB.yaml [--set ...] [--resume NAME]``."""

from __future__ import annotations

from pathlib import Path

import typer

from bratslab.app.cli import examples


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.command("sweep", epilog=examples.SWEEP)(sweep)


def sweep(
    job: Path | None = typer.Argument(
        None,
        help="Job spec (jobs/*.yaml) with a `sweep` section; optional with --resume, which "
        "uses the job stored in the sweep folder.",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Dotted override of the job, e.g. --set sweep.num_trials=8 (repeatable)."
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="Continue the sweep of this name ($BRATSLAB_HOME/sweeps/NAME): completed trials "
        "are kept, unfinished ones continue.",
    ),
) -> None:
    """Hyper-parameter sweep: Ray Tune + Optuna + ASHA, then TTA re-evaluation and registry."""
    from rich.console import Console

    from bratslab.config import ConfigError
    from bratslab.names import check_name
    from bratslab.shutdown import Terminated, leave
    from bratslab.tune.sweep import resume_sweep, start_sweep
    from bratslab.tune.trial_states import tally_line

    console = Console(soft_wrap=True)
    spec = None
    try:
        if resume:
            if job is not None or overrides:
                console.print(
                    "[yellow]--resume uses the job and space stored with the sweep; "
                    "JOB and --set are ignored[/yellow]"
                )
            from bratslab.jobs.spec import JobSpec

            outcome = resume_sweep(check_name(resume, "--resume"), job_type=JobSpec)
        else:
            if job is None:
                raise ConfigError("bratslab sweep: give a JOB.yaml (or --resume NAME)")
            from bratslab.jobs.spec import load_job

            spec = load_job(job, overrides)
            outcome = start_sweep(spec, job_source=str(job))
    except Terminated as stop:
        console.print(
            f"[yellow]stopped by {stop.reason}: continue with `bratslab sweep --resume NAME` "
            "(the sweep's folder name under $BRATSLAB_HOME/sweeps)[/yellow]"
        )
        leave(stop.exit_code)  # os._exit if a Ray call is still blocked

    console.print(_trial_table(outcome, spec))
    console.print(tally_line(outcome.trials))
    failed = [r for r in outcome.trials if r.status == "ERROR"]
    for r in failed[:3]:  # the reasons; each traceback is in the sweep's log
        console.print(f"[red]trial {r.trial_id} failed[/red]: {r.error}")
    console.print(f"parent MLflow run: {outcome.parent_run_id}  folder: {outcome.root}")
    if outcome.interrupted:
        console.print(f"[yellow]interrupted: continue with --resume {outcome.name}[/yellow]")
        raise typer.Exit(130)
    if failed and len(failed) == len(outcome.trials):
        console.print(f"[red]sweep {outcome.name}: every trial failed[/red]")
        raise typer.Exit(1)
    reg = outcome.registration
    if reg is not None:
        verdict = f"now {reg.alias}" if reg.promoted else f"{reg.alias} unchanged"
        console.print(
            f"registered models:/{reg.name}/{reg.version} (trial {reg.trial_id}; {verdict})"
        )


def _trial_table(outcome, spec):
    """The sweep's trials: status, epochs, best validation score and TTA score."""
    from rich.table import Table

    table = Table(title=f"sweep {outcome.name}")
    for col in ("trial", "status", "epochs", "best val", "TTA"):
        table.add_column(col)
    metric = spec.sweep.selection_metric if spec else "tta/dice_mean"
    for r in outcome.trials:
        tta = r.tta.get(metric)
        table.add_row(
            r.trial_id,
            r.status,
            str(r.iterations),
            "" if r.best_metric is None else f"{r.best_metric:.4f}",
            "" if tta is None else f"{tta:.4f}",
        )
    return table
