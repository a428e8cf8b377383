"""Commands of the evaluate stage: ``predict``, ``evaluate``, ``evaluate-model``, ``export rle``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from bratslab.app.cli import examples
from bratslab.app.cli.choices import TTAChoice, challenge_option, device_option
from bratslab.inference.tta_path import TTA_PATH_HELP, parse_tta_path

export_app = typer.Typer(
    help="Export predictions (Kaggle run-length encoding).", no_args_is_help=True
)

TTA_HELP = "Test-time augmentation: none, flips (8 mirrorings) or flips+rot90 (16 transforms)."
PP_FILE_HELP = (
    "Post-processing thresholds (JSON written by `bratslab postprocess fit`). Default: those "
    "the registered model version carries, if any."
)
NO_PP_HELP = "No post-processing, even when the model carries thresholds."
METRIC_HELP = (
    "Lesion-wise metric family: brats2023 (dilation + small-lesion floor, regions WT/TC/ET, "
    "--challenge sets d and T) or panoptica (the organisers' package since 2025: connected "
    "components matched on Dice, every region of --profile; needs bratslab[panoptica])."
)
MODEL_METRIC_HELP = (
    "Lesion-wise Dice family: brats2023 (--challenge sets d and T; a model of a 2024+ profile "
    "uses its profile's) or panoptica (the organisers' metric since 2025, every region of the "
    "model's profile; needs bratslab[panoptica])."
)
PROFILE_HELP = (
    "Challenge profile: the labels and the regions scored (`bratslab data profiles` lists them; "
    "e.g. gli = BraTS 2024+ post-treatment glioma with RC). brats2023 metric: also its d and T, "
    "instead of --challenge; default WT/TC/ET of either 2021/2023 convention. panoptica metric: "
    "default from the reference names (2021 → brats2021, BraTS-GLI → brats2024-gli, ...)."
)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def _postprocess_choice(file: Path | None, off: bool):
    """``--postprocess FILE`` / ``--no-postprocess`` → ``PredictConfig.postprocess``'s value."""
    from bratslab.config import ConfigError
    from bratslab.postprocess.config import load_config_file

    if file is not None and off:
        _fail("give --postprocess FILE or --no-postprocess, not both", 2)
    if off:
        return "none"
    if file is None:
        return "model"
    try:
        return load_config_file(file)
    except (FileNotFoundError, ConfigError) as e:
        _fail(str(e), 2)


def tta_path_option(text: str) -> str:
    """``--tta-path``, checked (exit 2 naming the flag)."""
    try:
        parse_tta_path(text)
    except ValueError as e:
        _fail(f"--tta-path: {e}", 2)
    return text


def _exit_on_failures(failures: list[dict[str, str]]) -> None:
    """Name every failed case with its file and reason on stderr; exit 1 if there is any."""
    for f in failures:
        typer.secho(f"FAILED {f['case']}: {f['file']}: {f['reason']}", fg="red", err=True)
    if failures:
        raise typer.Exit(1)


def _header(text: str) -> None:
    """The command's first line, with where its log file is (bratslab.console)."""
    from bratslab import console

    log_file = console.log_file()
    console.say(text + (f"; log {log_file}" if log_file else ""))


def predict(
    model: list[str] = typer.Option(
        ...,
        "--model",
        "-m",
        help="Checkpoint folder (model.pt + model.json) or MLflow URI (runs:/..., "
        "models:/NAME@alias, models:/<id>). Repeat for an ensemble.",
    ),
    input: Path = typer.Option(..., "--input", "-i", help="Raw BraTS folder (seg optional)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for {case}.nii.gz."),
    tta: TTAChoice = typer.Option("flips", "--tta", help=TTA_HELP),
    tta_path: str = typer.Option("auto", "--tta-path", help=TTA_PATH_HELP),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
    save_probabilities: bool = typer.Option(
        False, "--save-probabilities", help="Also write {case}_prob.nii.gz (X, Y, Z, C)."
    ),
    uncertainty: bool = typer.Option(
        False, "--uncertainty", help="Also write {case}_std.nii.gz (std over TTA passes)."
    ),
    workers: int = typer.Option(
        0, "--workers", help="Prediction actors at most, one case each at a time (0: no cap)."
    ),
    threads: int = typer.Option(1, "--threads", help="CPUs (torch threads) per prediction actor."),
    device: str = device_option(),
    no_amp: bool = typer.Option(False, "--no-amp", help="Full float32 (no bf16/fp16 autocast)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases already predicted."),
    postprocess: Path | None = typer.Option(None, "--postprocess", help=PP_FILE_HELP),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help=NO_PP_HELP),
) -> None:
    """Segment every case of a raw folder; outputs in the source geometry and label convention.

    Small components are removed when the model is a registered version carrying fitted
    thresholds (`bratslab postprocess fit`), or with --postprocess FILE; the log says which.
    """
    from bratslab.config import validate
    from bratslab.data.discovery import discover_cases
    from bratslab.inference.config import PredictConfig
    from bratslab.inference.predict import check_output_dir, predict_folder
    from bratslab.tracking.model_store import ModelIntegrityError

    cfg = validate(
        PredictConfig,
        {
            "tta": tta,
            "tta_path": tta_path_option(tta_path),
            "overlap": overlap,
            "save_probabilities": save_probabilities,
            "uncertainty": uncertainty,
            "workers": workers,
            "threads": threads,
            "device": device,
            "amp": not no_amp,
            "overwrite": overwrite,
            "postprocess": _postprocess_choice(postprocess, no_postprocess),
        },
        "predict options",
    )
    try:  # where it reads and writes, before the header and before any model is fetched
        check_output_dir(output)
        discover_cases(input)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
    _header(f"predict {input} with {' + '.join(model)} (tta {tta}) into {output}")
    try:
        report = predict_folder(model, input, output, cfg)
    except ModelIntegrityError as e:  # the stored weights are not the registered ones
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
    typer.echo(
        f"{len(report.written)} written, {len(report.skipped)} already done, "
        f"{len(report.failures)} failed in {report.seconds:.1f} s → {output}"
    )
    _exit_on_failures(report.failures)


def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted {case}.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Raw BraTS folder with the reference segs."),
    challenge: str = challenge_option(),
    output: Path = typer.Option(
        Path("metrics.csv"),
        "--output",
        "-o",
        help="CSV path; the summary JSON and a Dice bar chart go beside it.",
    ),
    nsd_tolerance: float = typer.Option(1.0, "--nsd-tolerance", help="NSD tolerance in mm."),
    workers: int = typer.Option(1, "--workers", help="Cases scored in parallel processes."),
    metric: str = typer.Option("brats2023", "--metric", help=METRIC_HELP),
    profile: str | None = typer.Option(None, "--profile", help=PROFILE_HELP),
) -> None:
    """Score prediction files against reference segs: Dice, HD95, NSD and BraTS 2023
    lesion-wise metrics per case and region, or (--metric panoptica) the organisers' current
    panoptica-based metrics per region of a profile. To score a model, see evaluate-model.

    A case whose prediction or reference cannot be read is named on stderr and left out; the
    others are scored and written, and the exit status is 1. A reference without a prediction
    is scored as empty, unless more than half lack one: then nothing is scored (exit 1).
    """
    from bratslab.evaluate.score_report import plot_path, print_summary, summary_path
    from bratslab.evaluate.scoring import PredictionsMissing, evaluate_folder

    if metric not in ("brats2023", "panoptica"):
        _fail(f"--metric must be brats2023 or panoptica, not {metric!r}", 2)
    if metric == "panoptica":
        _evaluate_panoptica(pred, ref, profile, output, workers)
        return
    try:
        result = evaluate_folder(
            pred,
            ref,
            challenge,
            output,
            nsd_tolerance_mm=nsd_tolerance,
            workers=workers,
            profile=profile,
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
    except PredictionsMissing as e:  # nothing written: scoring them as empty would mislead
        _fail(str(e), 1)
    print_summary(result.summary)
    typer.echo(f"wrote {output}, {summary_path(output)}, {plot_path(output)}")
    _exit_on_failures(result.failures)


def _evaluate_panoptica(
    pred: Path, ref: Path, profile: str | None, output: Path, workers: int
) -> None:
    """``evaluate --metric panoptica``: score, print the table, exit 1 on failed cases."""
    from rich.console import Console

    from bratslab.evaluate.panoptica_metric import MissingExtraError
    from bratslab.evaluate.panoptica_scoring import evaluate_folder_panoptica, summary_table
    from bratslab.evaluate.score_report import summary_path

    try:
        result = evaluate_folder_panoptica(pred, ref, profile, output, workers=workers)
    except MissingExtraError as e:
        _fail(str(e), 2)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
    Console().print(summary_table(result.summary))
    if result.missing:
        typer.echo(f"no prediction (scored as empty): {', '.join(result.missing)}")
    typer.echo(f"wrote {output}, {summary_path(output)}")
    _exit_on_failures(result.failures)


def evaluate_model_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder or MLflow URI."),
    store: Path = typer.Option(..., "--store", help="Preprocessed store folder."),
    fold: int = typer.Option(0, "--fold", help="Fold whose validation cases are scored."),
    tta: TTAChoice = typer.Option("flips", "--tta", help=TTA_HELP),
    tta_path: str = typer.Option("auto", "--tta-path", help=TTA_PATH_HELP),
    max_cases: int = typer.Option(0, "--max-cases", help="Score only the first N (0: all)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
    challenge: str = challenge_option(),
    metric: str = typer.Option("brats2023", "--metric", help=MODEL_METRIC_HELP),
    run_id: str | None = typer.Option(
        None, "--run-id", help="MLflow run to log to (default: the model's own run)."
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log to MLflow."),
    postprocess: Path | None = typer.Option(None, "--postprocess", help=PP_FILE_HELP),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help=NO_PP_HELP),
) -> None:
    """Score a model (not prediction files: see evaluate) on a store's fold with TTA and log
    tta/ metrics to its MLflow run.

    When the model carries post-processing thresholds (or with --postprocess FILE), the scores
    after post-processing are shown beside them and logged as pp/ metrics.
    """
    from bratslab.evaluate.panoptica_metric import MissingExtraError
    from bratslab.inference.model_eval import evaluate_model
    from bratslab.tracking.model_store import ModelIntegrityError

    if metric not in ("brats2023", "panoptica"):
        _fail(f"--metric must be brats2023 or panoptica, not {metric!r}", 2)
    choice = _postprocess_choice(postprocess, no_postprocess)
    _header(f"evaluate-model {model} on fold {fold} of {store} (tta {tta}, {metric})")
    try:
        metrics = evaluate_model(
            model,
            store,
            fold,
            tta,
            max_cases=max_cases or None,
            overlap=overlap,
            challenge="panoptica" if metric == "panoptica" else challenge,
            run_id=run_id,
            log_to_mlflow=not no_log,
            progress=True,
            postprocess=choice,
            tta_path=tta_path_option(tta_path),
        )
    except ModelIntegrityError as e:
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError, MissingExtraError) as e:
        _fail(str(e), 2)
    _print_model_metrics(metrics, f"{model} · fold {fold} · tta {tta}")


def _print_model_metrics(metrics: dict[str, float], title: str) -> None:
    """One row per ``tta/`` metric; a ``post-processed`` column with its ``pp/`` twin if any."""
    from rich.console import Console
    from rich.table import Table

    from bratslab.inference.model_eval import PP_PREFIX

    with_pp = any(k.startswith(PP_PREFIX) for k in metrics)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if with_pp:
        table.add_column("post-processed", justify="right")
    for k, v in metrics.items():
        if k.startswith(PP_PREFIX):
            continue
        row = [k, f"{v:.4f}"]
        if with_pp:
            twin = metrics.get(PP_PREFIX + k.partition("/")[2])
            row.append("" if twin is None else f"{twin:.4f}")
        table.add_row(*row)
    Console().print(table)


@export_app.command("rle")
def export_rle_cmd(
    pred: Path = typer.Argument(..., help="Folder of predicted {case}.nii.gz."),
    out: Path = typer.Argument(..., help="CSV to write (id,case,region,shape,rle)."),
    by: Literal["regions", "labels"] = typer.Option(
        "regions", "--by", help="One row per region (wt, tc, et) or per label (1, 2, et)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace OUT when it exists (refused otherwise, exit 2)."
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        help="Challenge profile of the predictions: rows are its regions (e.g. et, netc, snfh, "
        "rc, tc, wt for gli-post) or its labels by name.",
    ),
) -> None:
    """Kaggle-style run-length encoding: Fortran order, 1-based start/length pairs.

    Exit 1 when the folder holds no prediction or some cannot be read (named on stderr; the
    readable ones are still written).
    """
    from bratslab.evaluate.export import NoPredictionsError, export_rle

    try:
        report = export_rle(pred, out, by, overwrite, profile)
    except NoPredictionsError as e:
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 2)
    if report.cases:
        typer.echo(f"wrote {report.rows} rows ({len(report.cases)} cases) to {out}")
    else:
        typer.secho(f"no prediction could be exported; {out} not written", fg="red", err=True)
    _exit_on_failures(report.failures)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.command("predict", epilog=examples.PREDICT)(predict)
    app.command("evaluate", epilog=examples.EVALUATE)(evaluate)
    app.command("evaluate-model", epilog=examples.EVALUATE_MODEL)(evaluate_model_cmd)
    app.add_typer(export_app, name="export")
