"""``bratslab recipe ssa``: the BraTS-Africa recipe end to end (:mod:`bratslab.app.recipe`).

Exit status: 0 the recipe ran and scored the held-out cases; 1 a step failed (one line naming
it; the traceback with ``--verbose``); 2 bad usage (a job spec, an override); 143/130 stopped
(rerun the same command to resume).
"""

from __future__ import annotations

from pathlib import Path

import typer

recipe_app = typer.Typer(
    help="Recipes that chain the stages: pretrain, register, finetune, fit, predict, score.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``recipe`` group to the root app."""
    app.add_typer(recipe_app, name="recipe")


@recipe_app.command("ssa")
def ssa(
    out: Path = typer.Option(
        None, help="Recipe folder (default: $BRATSLAB_HOME/recipe-ssa); a rerun resumes it."
    ),
    gli_cases: int = typer.Option(24, min=2, help="Clean glioma cases to pretrain on."),
    ssa_cases: int = typer.Option(8, min=4, help="Shifted cases to finetune on (4 folds)."),
    test_cases: int = typer.Option(8, min=1, help="Held-out shifted cases predicted and scored."),
    shape: tuple[int, int, int] = typer.Option(
        (240, 240, 155), help="Volume shape of the synthetic cases (X Y Z voxels)."
    ),
    pretrain_job: Path = typer.Option(
        None, help="Pretraining job spec (default: jobs/train_cpu.yaml)."
    ),
    finetune_job: Path = typer.Option(
        None, help="Finetuning job spec (default: jobs/ssa_cpu.yaml)."
    ),
    pretrain_set: list[str] = typer.Option(
        [], "--pretrain-set", help="Dotted override of the pretraining job (repeatable)."
    ),
    finetune_set: list[str] = typer.Option(
        [], "--finetune-set", help="Dotted override of the finetuning job (repeatable)."
    ),
    seed: int = typer.Option(0, help="Training seed of both stages (training.seed)."),
    stress: int = typer.Option(
        1, min=0, max=8, help="Stressed copies of each validation case in the post-processing fit."
    ),
    postprocess: bool = typer.Option(
        False,
        "--postprocess/--no-postprocess",
        help="Fit post-processing thresholds on the finetune's validation cases, store them on "
        "its version and apply them (off: on held-out shifted cases they removed true "
        "satellite lesions; BENCHMARKS.md).",
    ),
    workers: int = typer.Option(2, min=1, help="Preprocessing/prediction tasks in flight."),
) -> None:
    """BraTS-Africa recipe on CPU: pretrain on clean glioma, register, finetune on a few
    shifted cases from the champion, fit post-processing, predict held-out shifted cases with
    flip TTA and score them lesion-wise."""
    from bratslab.app.recipe import RecipeConfig, RecipeError, fail, run_recipe
    from bratslab.settings import get_settings
    from bratslab.shutdown import Terminated, leave
    from bratslab.tracking.alias_guard import AliasRefusedError
    from bratslab.tracking.model_versions import RegistryError
    from bratslab.train.failures import describe, is_training_failure

    cfg = RecipeConfig(
        out=out or get_settings().home / "recipe-ssa",
        gli_cases=gli_cases,
        ssa_cases=ssa_cases,
        test_cases=test_cases,
        shape=shape,
        pretrain_overrides=list(pretrain_set),
        finetune_overrides=list(finetune_set),
        seed=seed,
        stress=stress,
        postprocess=postprocess,
        workers=workers,
    )
    if pretrain_job is not None:
        cfg.pretrain_job = pretrain_job
    if finetune_job is not None:
        cfg.finetune_job = finetune_job
    try:
        run_recipe(cfg)
    except Terminated as stop:
        typer.secho(f"stopped by {stop.reason}: rerun the same command to resume", err=True)
        leave(stop.exit_code)
    except (RecipeError, RegistryError, AliasRefusedError) as e:
        fail(f"recipe ssa: {e}")
    except Exception as e:
        if not is_training_failure(e):
            raise
        fail(f"recipe ssa: training failed: {describe(e, 0)}")
