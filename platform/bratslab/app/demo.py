"""What ``bratslab demo`` runs: the whole pipeline end to end on synthetic data.

synthesise → preprocess (Ray) → smoke sweep across U-Net, SegResNet and MedNeXt (Ray Tune +
Optuna + ASHA, each trial a Ray Train run) → TTA re-evaluation of the best trials → register
the champion in MLflow → fit lesion-wise post-processing on validation (stored on the version)
→ predict held-out cases with ``models:/NAME@champion`` (post-processed) → evaluate → results
table and a run report PNG logged to MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

REPO_ROOT = Path(__file__).resolve().parents[3]
BACKGROUND = "t2f"  # the report overlays the labels on FLAIR, where oedema shows


def _default_job() -> Path:
    return REPO_ROOT / "jobs" / "demo.yaml"


def run_demo(
    cases: int,
    holdout: int,
    shape: tuple[int, int, int],
    job: Path | None,
    overrides: list[str],
    workers: int,
    out: Path | None,
) -> None:
    """Run the whole pipeline on ``cases`` synthetic training cases (volumes ``shape``, X Y Z)
    and ``holdout`` held-out ones under ``out`` (default ``$BRATSLAB_HOME/demo``), printing a
    results table; exits 1 when the sweep registers no model."""
    from rich.console import Console

    from bratslab import console as routing
    from bratslab.cluster import ensure_ray
    from bratslab.settings import get_settings

    console = Console(soft_wrap=True)
    settings = get_settings()
    root = (out or settings.home / "demo").absolute()
    log_file = routing.attach(root)  # Ray's, MLflow's, Optuna's and the workers' output
    raw, held, store = root / "raw", root / "holdout", root / "store"
    t0 = time.perf_counter()

    def step(text: str) -> None:
        console.rule(f"[bold]{text}[/bold]  [dim]{time.perf_counter() - t0:.0f} s[/dim]")

    step("1/8 synthesise BraTS-2023-style cases")
    _synthesise(raw, held, cases, holdout, shape)
    console.print(f"{cases} training cases in {raw}, {holdout} held-out cases in {held}")

    ensure_ray(settings)
    step("2/8 preprocess into a .npy store (Ray)")
    _preprocess(raw, store, workers, console)

    step("3/8 sweep U-Net / SegResNet / MedNeXt (Ray Tune + Optuna + ASHA)")
    outcome = _sweep(job or _default_job(), store, overrides, settings)
    reg = outcome.registration
    if reg is None:
        console.print("[red]the sweep registered no model; see the trial table above[/red]")
        raise typer.Exit(1)
    console.print(
        f"steps 4-5/8 (TTA re-evaluation, registry): models:/{reg.name}/{reg.version} "
        f"{'is now' if reg.promoted else 'did not beat the current'} '{reg.alias}'"
    )

    champion = f"models:/{reg.name}@{reg.alias}"
    step("6/8 fit lesion-wise post-processing on fold 0's validation cases")
    _fit_postprocess(champion, store, root, console)

    step("7/8 predict held-out cases with the champion (post-processed)")
    from bratslab.inference.config import PredictConfig
    from bratslab.inference.predict import predict_folder

    pred = root / "pred"
    predict_folder(
        champion, held, pred, PredictConfig(tta="flips", workers=workers, overwrite=True)
    )

    step("8/8 evaluate against the ground truth")
    from bratslab.evaluate.scoring import evaluate_folder

    result = evaluate_folder(pred, held, "gli", root / "metrics.csv", progress=False)

    report = _report(root, outcome, result, held, pred)
    from bratslab.tracking.mlflow_runs import log_artifact

    log_artifact(outcome.parent_run_id, report, "report")
    _print_results(console, outcome, result, champion, report, settings, time.perf_counter() - t0)
    if log_file is not None:
        console.print(f"log: {log_file}")


# --------------------------------------------------------------------------- steps


def _synthesise(raw: Path, held: Path, cases: int, holdout: int, shape) -> None:
    from bratslab.data.synth import synthesize_dataset

    # Deterministic per seed, so a rerun finds the same files; skip work already on disk.
    if len(list(raw.glob("*/"))) != cases:
        synthesize_dataset(raw, cases, "brats2023", seed=0, shape=shape, progress=True)
    if len(list(held.glob("*/"))) != holdout:
        # Another seed and another cohort name: held-out ids never collide with training ids.
        synthesize_dataset(held, holdout, "brats2023", seed=1, shape=shape, cohort="SSA")


def _sweep(job_path: Path, store: Path, overrides: list[str], settings):
    """The sweep of ``job_path`` on ``store``: its outcome (trials, registration)."""
    from bratslab.jobs.spec import load_job
    from bratslab.tune.sweep import start_sweep

    spec = load_job(job_path, [f"data.store={store}", *overrides])
    return start_sweep(spec, job_source=str(job_path), settings=settings)


def _preprocess(raw: Path, store: Path, workers: int, console) -> None:
    from bratslab.app.cli.data import show_fingerprint
    from bratslab.data.config import PreprocessConfig
    from bratslab.data.preprocess_tasks import run_preprocess
    from bratslab.data.store import Store

    # The synthetic heads are small; pad to 64³ rather than the 128³ meant for real BraTS.
    report = run_preprocess(raw, store, PreprocessConfig(min_size=[64, 64, 64]), workers)
    if report.quarantined:
        console.print(f"[yellow]quarantined: {', '.join(report.quarantined)}[/yellow]")
    show_fingerprint(Store(store), console)


def _fit_postprocess(champion: str, store: Path, root: Path, console) -> None:
    """``bratslab postprocess fit --stress 1`` on the champion (as the CPU recipe fits, with
    one stressed copy of each validation case): thresholds stored on its version, which
    ``predict`` then applies by default."""
    from bratslab.inference.postprocess_fit import (
        fit_model,
        register_document,
        result_document,
        write_document,
    )
    from bratslab.postprocess.config import FitConfig

    fit = FitConfig(stress=1)
    result = fit_model(champion, store, 0, "flips", fit=fit)
    doc = result_document(result, model=champion, fold=0, tta="flips", stress=fit.stress)
    path = write_document(root / "postprocess.json", doc)
    where = register_document(champion, path, doc)
    console.print(f"thresholds {doc['config']} stored on {where}")


def _report(root: Path, outcome, result, held: Path, pred: Path) -> Path:
    from bratslab.app.run_report import OverlayCase, render_report
    from bratslab.data.discovery import discover_cases
    from bratslab.data.labels import to_store_labels
    from bratslab.tracking.mlflow_runs import metric_history

    curves = {}
    for row in outcome.trials:
        if row.mlflow_run_id:
            label = f"{row.trial_id} {row.params.get('model.arch', '')}".strip()
            tta = (row.tta or {}).get("tta/lesion_dice_mean")
            if tta is not None:  # the candidates the sweep re-evaluated with TTA
                label += f" (TTA lesion-wise {tta:.2f})"
            curves[label] = metric_history(row.mlflow_run_id, "val/dice_mean")
    regions = result.summary.get("regions", {})
    region_dice = {
        what: {r: v[key]["mean"] for r, v in regions.items() if key in v}
        for what, key in (("voxel Dice", "dice"), ("lesion-wise Dice", "lesion_dice"))
    }
    overlays = []
    for case in discover_cases(held):
        pred_file = pred / f"{case.id}.nii.gz"
        if case.seg is None or not pred_file.is_file():
            continue
        overlays.append(
            OverlayCase(
                case.id,
                np_load(case.files[BACKGROUND]),
                to_store_labels(np_load(case.seg), case.et_label),
                to_store_labels(np_load(pred_file), case.et_label),
                modality=BACKGROUND,
            )
        )
    return render_report(
        root / "report.png",
        curves=curves,
        region_dice=region_dice,
        overlays=overlays[:2],
        title=f"bratslab demo — sweep {outcome.name}",
        bars_title="champion on held-out cases (flip TTA, post-processed)",
    )


def np_load(path: Path):
    """A NIfTI volume as a numpy array in its stored dtype."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj)


def _print_results(console, outcome, result, champion, report, settings, seconds) -> None:
    from rich.table import Table

    from bratslab.tune.trial_states import tally_line

    table = Table(title="sweep trials (validation fold)")
    for col in ("trial", "architecture", "epochs", "val Dice", "TTA Dice", "TTA lesion Dice"):
        table.add_column(col)
    for row in outcome.trials:
        tta = row.tta or {}

        def fmt(v):
            return "" if v is None else f"{v:.3f}"

        table.add_row(
            row.trial_id,
            str(row.params.get("model.arch", "?")),
            str(row.iterations),
            fmt(row.best_metric),
            fmt(tta.get("tta/dice_mean")),
            fmt(tta.get("tta/lesion_dice_mean")),
        )
    console.print(table)
    console.print(tally_line(outcome.trials))

    held = Table(title=f"held-out evaluation of {champion}")
    for col in ("region", "Dice", "HD95 (mm)", "lesion Dice", "lesion HD95"):
        held.add_column(col)
    for region, stats in result.summary.get("regions", {}).items():
        held.add_row(
            region.upper(),
            f"{stats['dice']['mean']:.3f}",
            f"{stats['hd95']['mean']:.1f}",
            f"{stats['lesion_dice']['mean']:.3f}",
            f"{stats['lesion_hd95']['mean']:.1f}",
        )
    console.print(held)
    console.print(
        f"champion: [bold]{champion}[/bold]  report: {report}\n"
        f"browse: [bold]bratslab ui[/bold] (MLflow at {settings.tracking_uri}), "
        f"`bratslab models show {champion.split('/')[1].split('@')[0]} --alias champion`, "
        f"`bratslab runs list --sweep {outcome.name}`\n"
        f"demo finished in {seconds:.0f} s"
    )
