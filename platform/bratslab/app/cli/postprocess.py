"""Commands of the post-processing stage: ``bratslab postprocess fit|apply``.

Exit status: 0 success; 1 the model's stored files fail their integrity check, or some
predictions could not be post-processed or fitted on (named on stderr); 2 usage or
configuration error.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bratslab.app.cli.choices import TTAChoice, challenge_option
from bratslab.inference.tta_path import TTA_PATH_HELP

postprocess_app = typer.Typer(
    help="Lesion-wise-aware post-processing: fit minimum component sizes on a fold's "
    "validation cases, store them on the model's registered version, apply them.",
    no_args_is_help=True,
)

TTA_HELP = "Test-time augmentation of the validation predictions (use what predict will use)."


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.add_typer(postprocess_app, name="postprocess")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def _parse_candidates(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        _fail(f"--candidates {text!r}: expected whole numbers separated by commas")


@postprocess_app.command("fit")
def fit_cmd(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Checkpoint folder or MLflow URI (models:/NAME@alias, ...): predict its fold's "
        "validation cases and fit on them. With --pred, only where the thresholds are stored.",
    ),
    store: Path | None = typer.Option(None, "--store", help="Preprocessed store folder."),
    pred: Path | None = typer.Option(
        None,
        "--pred",
        help="Instead of predicting: a folder of predictions already written "
        "({case}.nii.gz, e.g. each fold model's predictions of its held-out cases) ...",
    ),
    ref: Path | None = typer.Option(
        None, "--ref", help="... and the raw BraTS folder with their reference segs."
    ),
    fold: int = typer.Option(0, "--fold", help="Fold whose validation cases are predicted."),
    tta: TTAChoice = typer.Option("flips", "--tta", help=TTA_HELP),
    tta_path: str = typer.Option("auto", "--tta-path", help=TTA_PATH_HELP),
    out: Path = typer.Option(Path("postprocess.json"), "--out", "-o", help="JSON to write."),
    register_: bool = typer.Option(
        True,
        "--register/--no-register",
        help="Store the thresholds on the registered model version (tags + run artifact), "
        "where `bratslab predict` finds them. Ignored for a local checkpoint.",
    ),
    max_cases: int = typer.Option(0, "--max-cases", help="Use only the first N cases (0: all)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
    challenge: str = challenge_option(),
    stress: int = typer.Option(
        0,
        "--stress",
        help="Also fit on N stressed copies of each validation case: small copies of its "
        "tumour pasted in, then a strong scanner shift (bias field, noise, thick slices, "
        "contrast curves). Clean cases show neither the small false positives of shifted "
        "scans nor small true lesions, which the thresholds must weigh.",
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        help="With --pred/--ref: the challenge profile of both (e.g. gli-post); a minimum size "
        "is fitted per region of it. A model's own profile is used with --model.",
    ),
    candidates: str | None = typer.Option(
        None,
        "--candidates",
        help="Candidate sizes in voxels at full BraTS size, e.g. 0,10,25,50,100,150,250,500 "
        "(the default); scaled to the store's volume size.",
    ),
) -> None:
    """Fit per-region minimum component sizes (and ET→NCR) on a fold's validation cases
    (--model --store), or on predictions already written (--pred --ref).

    Objective: mean BraTS lesion-wise Dice over WT, TC and ET (a post-treatment model: over the
    six regions of its profile, a minimum size each); a coordinate-wise search over the
    candidate sizes starting from no post-processing. Prints the scores before and after.
    """
    from bratslab.config import validate
    from bratslab.evaluate.lesionwise import resolve_params
    from bratslab.inference.postprocess_fit import write_document
    from bratslab.postprocess.config import FitConfig
    from bratslab.tracking.model_store import ModelIntegrityError

    given = _parse_candidates(candidates)
    fit = validate(
        FitConfig,
        {
            "challenge": challenge,
            "stress": stress,
            **({"candidates": given} if given is not None else {}),
        },
        "postprocess fit options",
    )
    from_folder = pred is not None or ref is not None
    if from_folder and (pred is None or ref is None or store is not None):
        _fail("fit on written predictions with --pred and --ref (no --store)")
    if not from_folder and (model is None or store is None):
        _fail("give --model and --store (predict the fold's validation cases), or --pred and --ref")
    if profile is not None and not from_folder:
        _fail("--profile goes with --pred and --ref (a model's profile is its own)")
    failures: list[dict[str, str]] = []
    try:
        resolve_params(challenge)
        out = _check_out(out)
        if from_folder:
            result, failures, doc, title = _fit_on_predictions(pred, ref, fit, profile)
        else:
            result, doc, title = _fit_on_model(
                model, store, fold, tta, fit, max_cases or None, overlap, tta_path
            )
    except ModelIntegrityError as e:
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError, LookupError) as e:
        _fail(str(e), 2)
    write_document(out, doc)
    _print_fit(result, title)
    typer.echo(f"thresholds: {result.config.summary()}; wrote {out}")
    for f in failures:
        typer.secho(f"LEFT OUT {f['case']}: {f['file']}: {f['reason']}", fg="red", err=True)
    if register_ and model is not None:
        _register(model, out, doc)
    if failures:
        raise typer.Exit(1)


def _fit_on_predictions(pred: Path, ref: Path, fit, profile: str | None = None):
    """``fit --pred --ref``: fit on predictions already written.

    Returns:
        ``(result, failures, document, title)``; ``failures`` name the cases left out.
    """
    from bratslab.inference.postprocess_fit import fit_folder, result_document

    folder_fit = fit_folder(pred, ref, fit, progress=True, profile=profile)
    doc = result_document(folder_fit.result, pred=pred, ref=ref)
    return folder_fit.result, folder_fit.failures, doc, f"{pred} against {ref}"


def _fit_on_model(model, store, fold, tta, fit, max_cases, overlap, tta_path):
    """``fit --model --store``: predict ``fold``'s validation cases with ``model``, then fit.

    Returns:
        ``(result, document, title)``.
    """
    from bratslab import console
    from bratslab.app.cli.evaluate import tta_path_option
    from bratslab.inference.postprocess_fit import fit_model, result_document

    # Loading the model and predicting the cases takes a minute before the first bar.
    with console.step(
        f"fit: predict fold {fold}'s validation cases with {model} "
        f"(tta {tta}), then search thresholds"
    ):
        result = fit_model(
            model, store, fold, tta, fit=fit, max_cases=max_cases,
            overlap=overlap, progress=True, tta_path=tta_path_option(tta_path),
        )  # fmt: skip
    doc = result_document(result, model=model, fold=fold, tta=tta, stress=fit.stress)
    return result, doc, f"{model} · fold {fold} · tta {tta}"


def _register(model: str, out: Path, doc: dict) -> None:
    """Store the thresholds on ``model``'s registered version, or say why they were not."""
    from bratslab.inference.postprocess_fit import register_document

    where = register_document(model, out, doc)
    if where is None:
        typer.echo(
            f"{model} is not a registered model version: thresholds not stored in the "
            f"registry (pass --postprocess {out} to predict)"
        )
    else:
        typer.echo(f"stored on {where} (tag bratslab.postprocess); predict applies them")


def _check_out(out: Path) -> Path:
    """Fail before the (slow) fit when the output cannot be written."""
    from bratslab.atomic import check_output_path

    return check_output_path(out)


def _print_fit(result, title: str) -> None:
    """Lesion-wise Dice per region before and after, with the region's threshold."""
    from rich.console import Console
    from rich.table import Table

    cfg = result.config
    if cfg.profile is not None:  # a minimum size per region of the model's profile
        thresholds = {r: f"min {cfg.min_size.get(r, 0)}" for r in result.before if r != "mean"}
    else:
        thresholds = {
            "wt": f"min {cfg.min_size_wt}",
            "tc": f"min {cfg.min_size_tc}",
            "et": f"min {cfg.min_size_et}, NCR below {cfg.et_to_ncr_below}",
        }
    thresholds["mean"] = ""
    table = Table(title=title)
    for name, justify in (("region", "left"), ("before", "right"), ("after", "right")):
        table.add_column(name, justify=justify)
    table.add_column("threshold (voxels)")
    for region, text in thresholds.items():
        before, after = result.before[region], result.after[region]
        table.add_row(region.upper(), f"{before:.4f}", f"{after:.4f}", text)
    Console().print(table)


@postprocess_app.command("apply")
def apply_cmd(
    config: Path = typer.Option(
        ..., "--config", "-c", help="Thresholds JSON (postprocess.json from `fit`)."
    ),
    in_dir: Path = typer.Argument(..., help="Folder of predicted {case}.nii.gz."),
    out_dir: Path = typer.Argument(..., help="Folder to write the post-processed masks to."),
) -> None:
    """Apply fitted thresholds to a folder of predictions (either ET convention)."""
    from bratslab.config import ConfigError
    from bratslab.inference.postprocess_fit import apply_folder
    from bratslab.postprocess.config import load_config_file

    try:
        cfg = load_config_file(config)
        report = apply_folder(cfg, in_dir, out_dir)
    except (FileNotFoundError, ConfigError) as e:
        _fail(str(e), 2)
    typer.echo(f"{len(report.written)} written ({cfg.summary()}) → {out_dir}")
    for f in report.failures:
        typer.secho(f"FAILED {f['case']}: {f['file']}: {f['reason']}", fg="red", err=True)
    if report.failures:
        raise typer.Exit(1)
