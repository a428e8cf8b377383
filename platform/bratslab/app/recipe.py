"""What ``bratslab recipe ssa`` runs: the BraTS-Africa recipe end to end on CPU.

The BraTS-SSA 2024 winners pretrained on adult glioma, finetuned on the ~60 BraTS-Africa
training cases and fitted lesion-wise post-processing. On synthetic data, at CPU size:

1. synthesise a clean glioma set (``gli``), a small strongly shifted set (``ssa``, the
   finetuning cases) and a held-out shifted set (``test``, another seed: never trained on, never
   fitted on), and preprocess the first two (``ssa`` in 4 folds, so 6 train and 2 validate);
2. pretrain ``jobs/train_cpu.yaml`` on ``gli`` and register it as ``bratslab-gli-cpu``
   (alias ``champion`` when it beats the current holder on its selection metric);
3. finetune ``jobs/ssa_cpu.yaml`` on ``ssa`` from that champion, pinned to its version
   (``model.init_from=models:/bratslab-gli-cpu/<V>``), and register the result as
   ``bratslab-ssa-cpu`` with its lineage (tag ``bratslab.init_from`` and the description);
4. with ``postprocess``: fit post-processing thresholds on the finetune's validation cases
   (flip TTA, stressed copies) and store them on that version (off by default: on held-out
   shifted cases they removed true satellite lesions, see BENCHMARKS.md);
5. predict ``test`` with flip TTA (and the thresholds, when fitted), score it with
   BraTS-Africa's lesion-wise parameters, log the scores (``heldout/...``) and a per-region
   chart to the finetune's run.

Every step skips what is already done (same folders, same run names), so a rerun resumes.
``benchmarks/bench_recipe_ssa.py`` runs the arms of the comparison through these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from bratslab.app.recipe_scoring import (
    fit_postprocess,
    heldout_metrics,
    metrics_path,
    score_heldout,
)
from bratslab.tracking.alias_guard import SELECTION_TAG

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
PRETRAINED = "bratslab-gli-cpu"
FINETUNED = "bratslab-ssa-cpu"
LINEAGE_TAG = "bratslab.init_from"  # version tag: the registered version finetuned from
SSA_FOLDS = 4  # 8 shifted cases → 6 train and 2 validate per fold
# Data seeds: each set its own (ids never collide: ``default_start_id``), the test set's unseen.
GLI_SEED, SSA_SEED, TEST_SEED = 0, 70, 71
EXPERIMENT = "tracking.experiment=bratslab-ssa-recipe"  # both stages' runs side by side


@dataclass
class RecipeConfig:
    """The recipe's sizes and jobs; the defaults are the 2-core CPU recipe."""

    out: Path
    gli_cases: int = 24
    ssa_cases: int = 8
    test_cases: int = 8
    shape: tuple[int, int, int] = (240, 240, 155)
    pretrain_job: Path = REPO_ROOT / "jobs" / "train_cpu.yaml"
    finetune_job: Path = REPO_ROOT / "jobs" / "ssa_cpu.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)
    seed: int = 0  # training seed (weights, sampling, augmentation) of both stages
    stress: int = 1  # stressed copies of each validation case in the post-processing fit
    # Off by default: on held-out shifted cases the fitted minimum sizes removed true satellite
    # lesions and cost 0.15 lesion-wise (BENCHMARKS.md, "BraTS-Africa recipe", arm n).
    postprocess: bool = False
    tta: str = "flips"
    workers: int = 2  # preprocessing/prediction tasks in flight (one CPU each)
    min_size: tuple[int, int, int] = (64, 64, 64)  # pad to the training patch

    @property
    def raw_gli(self) -> Path:
        return self.out / "raw_gli"

    @property
    def raw_ssa(self) -> Path:
        return self.out / "raw_ssa"

    @property
    def test(self) -> Path:
        return self.out / "test"

    @property
    def store_gli(self) -> Path:
        return self.out / "store_gli"

    @property
    def store_ssa(self) -> Path:
        return self.out / "store_ssa"


@dataclass
class Registered:
    """A trained run and the registered version it became."""

    run_id: str
    name: str
    version: str
    seconds: float

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


# --------------------------------------------------------------------------- data


def prepare_data(cfg: RecipeConfig, *, progress: bool = True) -> None:
    """Synthesise the three sets and preprocess ``gli`` and ``ssa`` (skipping what exists)."""
    from bratslab.data.config import PreprocessConfig
    from bratslab.data.preprocess_tasks import run_preprocess
    from bratslab.data.synth import default_start_id, synthesize_dataset

    sets = (
        (cfg.raw_gli, cfg.gli_cases, GLI_SEED, "none", "GLI"),
        (cfg.raw_ssa, cfg.ssa_cases, SSA_SEED, "strong", "SSA"),
        (cfg.test, cfg.test_cases, TEST_SEED, "strong", "SSA"),
    )
    for folder, n, seed, shift, cohort in sets:
        if len(list(folder.glob("*/"))) != n:  # deterministic per seed: a rerun writes the same
            synthesize_dataset(
                folder,
                n,
                "brats2023",
                seed=seed,
                shape=cfg.shape,
                shift=shift,
                cohort=cohort,
                start_id=default_start_id(seed),
                progress=progress,
            )
    size = list(cfg.min_size)
    for raw, store, folds in (
        (cfg.raw_gli, cfg.store_gli, 5),
        (cfg.raw_ssa, cfg.store_ssa, SSA_FOLDS),
    ):
        report = run_preprocess(
            raw,
            store,
            PreprocessConfig(min_size=size, num_folds=min(folds, _cases(raw))),
            cfg.workers,
            progress=progress,
        )
        if report.quarantined:
            raise RecipeError(f"{raw}: quarantined {', '.join(report.quarantined)}")


def _cases(folder: Path) -> int:
    return len(list(folder.glob("*/")))


class RecipeError(RuntimeError):
    """A step of the recipe could not produce what the next one needs (one line)."""


# --------------------------------------------------------------------------- training


def train_and_register(
    job: Path,
    overrides: list[str],
    *,
    run_name: str,
    model_name: str,
    store: Path,
    seed: int,
    tags: dict[str, str] | None = None,
    description: str | None = None,
) -> Registered:
    """Train ``job`` on ``store`` as ``run_name`` (a FINISHED run of that name is reused) and
    register its model as a version of ``model_name`` (an existing version of that run is
    reused), with ``tags``, ``description`` and the selection tag of the job's metric."""
    from bratslab.jobs.spec import load_job
    from bratslab.train.trainer import run_training

    spec = load_job(job, [f"data.store={store}", f"training.seed={seed}", *overrides])
    outcome = run_training(spec, name=run_name)
    seconds = _run_seconds(outcome.run_id)  # also right for a FINISHED run returned as recorded
    if not outcome.model_uri:
        raise RecipeError(f"run {run_name} logged no model; see its log in {outcome.storage_dir}")
    version = _version_of_run(model_name, outcome.run_id)
    if version is None:
        from bratslab import console
        from bratslab.tracking.registration import register

        console.adopt_library_loggers()  # MLflow's "Created version" prints: into the log file
        all_tags = {SELECTION_TAG: f"best/{spec.training.selection_metric}", **(tags or {})}
        version = register(outcome.model_uri, model_name, all_tags, description=description)
    return Registered(outcome.run_id, model_name, version, seconds)


def _run_seconds(run_id: str) -> float:
    """How long the MLflow run ``run_id`` ran (start to end), in seconds."""
    from bratslab.tracking.mlflow_runs import client

    info = client().get_run(run_id).info
    return max(0.0, ((info.end_time or info.start_time) - info.start_time) / 1000)


def _version_of_run(name: str, run_id: str) -> str | None:
    from bratslab.tracking.model_versions import RegistryError, list_versions

    try:
        versions = list_versions(name)
    except RegistryError:  # no such model yet
        return None
    return next((v.version for v in versions if v.run_id == run_id), None)


def pretrain(cfg: RecipeConfig) -> Registered:
    """Step 2: ``cfg.pretrain_job`` on the clean store, registered as :data:`PRETRAINED`."""
    return train_and_register(
        cfg.pretrain_job,
        [EXPERIMENT, *cfg.pretrain_overrides],
        run_name=f"ssa-recipe-pretrain-s{cfg.seed}",
        model_name=PRETRAINED,
        store=cfg.store_gli,
        seed=cfg.seed,
        description="Pretrained on clean glioma cases (bratslab recipe ssa, step 2).",
    )


def finetune(
    cfg: RecipeConfig,
    init: str | None,
    overrides: Sequence[str] = (),
    *,
    run_name: str | None = None,
    model_name: str = FINETUNED,
) -> Registered:
    """Step 3: ``cfg.finetune_job`` on the shifted store from ``init`` (a pinned version URI;
    None: from scratch), registered as ``model_name`` with its lineage; ``overrides`` come after
    the recipe's own (an arm's one change)."""
    tags, description = lineage(init, cfg.store_ssa)
    return train_and_register(
        cfg.finetune_job,
        [f"model.init_from={init or 'null'}", EXPERIMENT, *cfg.finetune_overrides, *overrides],
        run_name=run_name or f"ssa-recipe-finetune-s{cfg.seed}",
        model_name=model_name,
        store=cfg.store_ssa,
        seed=cfg.seed,
        tags=tags,
        description=description,
    )


def champion_version(pretrained: Registered) -> str:
    """Point ``champion`` at the pretrained version when it beats the holder on its selection
    metric (through the alias guard); the version ``champion`` then names, for the finetune to
    pin (so the lineage names what was really loaded, whatever the alias does later)."""
    from bratslab.tracking.alias_guard import selection_metric
    from bratslab.tracking.model_versions import get_version
    from bratslab.tracking.promotion import promote_if_better

    info = get_version(pretrained.name, version=pretrained.version)
    promote_if_better(pretrained.name, pretrained.version, selection_metric(info), "max")
    return get_version(pretrained.name, alias="champion").version


def lineage(pretrained_uri: str | None, store: Path) -> tuple[dict[str, str], str]:
    """A finetuned version's lineage: its tags and its description (None: from scratch)."""
    if pretrained_uri is None:
        return {}, f"Trained from scratch on the shifted store {store} (bratslab recipe ssa arm)."
    return (
        {LINEAGE_TAG: pretrained_uri},
        f"Finetuned from {pretrained_uri} (bratslab recipe ssa) on the shifted store {store}.",
    )


# --------------------------------------------------------------------------- the command


def check_jobs(cfg: RecipeConfig) -> None:
    """Both job specs load with their overrides (ConfigError naming the file and the key)."""
    from bratslab.jobs.spec import load_job

    load_job(cfg.pretrain_job, [EXPERIMENT, *cfg.pretrain_overrides])
    load_job(cfg.finetune_job, ["model.init_from=null", EXPERIMENT, *cfg.finetune_overrides])


def run_recipe(cfg: RecipeConfig) -> dict[str, Any]:
    """Run the recipe (module docstring) under ``cfg.out``, printing one rule per step and a
    results table; returns what it measured (seconds per stage, versions, held-out summary)."""
    from rich.console import Console

    from bratslab import console as routing
    from bratslab.cluster import ensure_ray

    check_jobs(cfg)  # a bad spec or --set: exit 2 before anything is synthesised or started
    console = Console(soft_wrap=True)
    cfg.out = cfg.out.absolute()
    log_file = routing.attach(cfg.out)  # Ray's, MLflow's and the workers' output
    t0 = time.perf_counter()

    def step(text: str) -> None:
        console.rule(f"[bold]{text}[/bold]  [dim]{time.perf_counter() - t0:.0f} s[/dim]")

    step("1/5 synthesise and preprocess: clean glioma, shifted finetune and held-out sets")
    ensure_ray()
    prepare_data(cfg)
    console.print(
        f"{cfg.gli_cases} clean cases ({cfg.store_gli}), {cfg.ssa_cases} shifted cases "
        f"({cfg.store_ssa}, {SSA_FOLDS} folds), {cfg.test_cases} held-out shifted cases "
        f"({cfg.test})"
    )

    step(f"2/5 pretrain on the clean glioma cases ({cfg.pretrain_job.name})")
    pre = pretrain(cfg)
    init = f"models:/{PRETRAINED}/{champion_version(pre)}"
    console.print(f"{pre.uri} registered ({pre.seconds:.0f} s); finetuning from {init}")

    step(f"3/5 finetune on {cfg.ssa_cases} shifted cases ({cfg.finetune_job.name})")
    fine = finetune(cfg, init)
    console.print(f"{fine.uri} registered ({fine.seconds:.0f} s), lineage {LINEAGE_TAG}={init}")

    doc, result = _fit_and_score(cfg, fine, step, console)
    seconds = time.perf_counter() - t0
    _print_table(console, result.summary, fine, init, pre, seconds, cfg.tta)
    if log_file is not None:
        console.print(f"log: {log_file}")
    return {
        "pretrain": pre,
        "finetune": fine,
        "init_from": init,
        "thresholds": doc["config"],
        "summary": result.summary,
        "seconds": seconds,
    }


def _fit_and_score(cfg: RecipeConfig, fine: Registered, step, console):
    """Steps 4 and 5: the thresholds document (``config`` None when off) and the held-out
    :class:`~bratslab.evaluate.scoring.EvaluationResult`, logged to the finetune's run."""
    from bratslab.evaluate.score_report import plot_path
    from bratslab.tracking.mlflow_runs import log_artifact, log_metrics

    doc: dict[str, Any] = {"config": None}
    if cfg.postprocess:
        step("4/5 fit post-processing on the finetune's validation cases (stored on the version)")
        doc = fit_postprocess(
            fine.uri,
            cfg.store_ssa,
            cfg.out / f"postprocess_s{cfg.seed}.json",
            tta=cfg.tta,
            stress=cfg.stress,
        )
        console.print(f"thresholds {doc['config']}")
    else:
        step("4/5 post-processing: off (--postprocess fits it; see BENCHMARKS.md)")
    step(f"5/5 predict the {cfg.test_cases} held-out shifted cases ({cfg.tta} TTA) and score")
    pred = cfg.out / f"pred_s{cfg.seed}"
    result = score_heldout(
        fine.uri,
        cfg.test,
        pred,
        tta=cfg.tta,
        workers=cfg.workers,
        postprocess="model" if cfg.postprocess else "none",
    )
    log_metrics(fine.run_id, heldout_metrics(result.summary), step=0)
    chart = plot_path(metrics_path(pred))
    if chart.is_file():
        log_artifact(fine.run_id, chart, "heldout")
    return doc, result


def _print_table(console, summary: dict, fine: Registered, init: str, pre, seconds, tta) -> None:
    from rich.table import Table

    table = Table(title=f"held-out shifted cases: {fine.uri} (finetuned from {init})")
    for col in ("region", "Dice", "lesion-wise Dice", "lesions found", "missed", "false pos."):
        table.add_column(col)
    for region, s in summary.get("regions", {}).items():
        table.add_row(
            region.upper(),
            f"{s['dice']['mean']:.3f}",
            f"{s['lesion_dice']['mean']:.3f}",
            str(s["tp"]),
            str(s["fn"]),
            str(s["fp"]),
        )
    console.print(table)
    console.print(
        f"lesion-wise mean {summary.get('mean_lesion_dice', float('nan')):.3f}, "
        f"Dice mean {summary.get('mean_dice', float('nan')):.3f}  "
        f"(pretrain {pre.seconds / 60:.1f} min, finetune {fine.seconds / 60:.1f} min, "
        f"whole recipe {seconds / 60:.1f} min)\n"
        f"serve it: bratslab predict --model {fine.uri} --input <folder> --output <folder> "
        f"--tta {tta}"
    )


def fail(message: str) -> None:
    """One red line on stderr and exit 1 (the work failed, the request was fine)."""
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(1)
