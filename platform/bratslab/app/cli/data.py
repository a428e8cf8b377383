"""Commands of the data stage: ``bratslab data synth|validate|preprocess|fingerprint``.

Exit status of ``validate`` and ``preprocess``: 0 every case is fine; 1 some cases were
quarantined (listed in ``failures.json`` and on the console; the others were processed);
2 usage or configuration error (bad option, missing folder, no case found).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

EXIT_DOC = (
    "Exit status: 0 = every case OK; 1 = some cases quarantined (see failures.json), "
    "all others done; 2 = usage or configuration error."
)

data_app = typer.Typer(
    help="Raw BraTS NIfTI → validated, preprocessed .npy store (synthesise, validate, "
    "preprocess, fingerprint).",
    no_args_is_help=True,
)


PROFILE_HELP = (
    "Challenge profile the segmentations are in (`bratslab data profiles` lists them), e.g. "
    "brats2024-gli for post-treatment glioma with RC = 4. Default: detected from file names and "
    "label values; an ambiguous label 4 is an error naming both readings."
)


class LayoutChoice(str, Enum):
    brats2023 = "brats2023"
    brats2021 = "brats2021"


class ShiftChoice(str, Enum):
    none = "none"
    mild = "mild"
    strong = "strong"


class DtypeChoice(str, Enum):
    float16 = "float16"
    float32 = "float32"


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.add_typer(data_app, name="data")


def _fail(msg: str) -> None:
    typer.secho(msg, fg="red", err=True)
    raise typer.Exit(2)


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the raw dataset into (created)."),
    cases: int = typer.Option(4, "--cases", "-n", min=1, help="Number of cases."),
    layout: LayoutChoice = typer.Option(
        LayoutChoice.brats2023,
        "--layout",
        help="File naming and label convention: brats2023 (t1n/t1c/t2w/t2f, ET=3) or "
        "brats2021 (t1/t1ce/t2/flair, ET=4).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    start_id: int | None = typer.Option(
        None,
        "--start-id",
        min=0,
        help="Number of the first case id (BraTS-GLI-NNNNN-000); default 1000 x --seed, so "
        "sets synthesised with different seeds (0-99, up to 1000 cases) never share an id.",
    ),
    shape: tuple[int, int, int] = typer.Option(
        (240, 240, 155), "--shape", help="Volume size X Y Z in voxels."
    ),
    spacing: tuple[float, float, float] = typer.Option(
        (1.0, 1.0, 1.0), "--spacing", help="Voxel size X Y Z in mm (e.g. 1 1 3: anisotropic)."
    ),
    unlabeled: int = typer.Option(
        0, "--unlabeled", min=0, help="How many of the cases (the last ones) get no seg file."
    ),
    shift: ShiftChoice = typer.Option(
        ShiftChoice.none,
        "--shift",
        help="Scanner shift on top of the same phantom: none (clean), mild or strong "
        "(BraTS-Africa-like: scanner gain, bias field, Rician noise, 3 mm slices, textured "
        "tumours, dim enhancement, satellite lesions).",
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        help="brats2024-gli (alias gli-post): post-treatment glioma cases with a resection "
        "cavity (labels NETC 1, SNFH 2, ET 3, RC 4; 2023 names, timepoint 100). Default: "
        "--layout's convention.",
    ),
) -> None:
    """Write a synthetic BraTS-like dataset: brain phantom, 4 contrasts, nested tumours."""
    from bratslab.data.synth import default_start_id, synthesize_dataset

    if unlabeled > cases:
        _fail(f"--unlabeled {unlabeled} is more than --cases {cases}")
    try:
        if min(spacing) <= 0:
            raise ValueError(f"spacing must be positive, not {list(spacing)}")
        if profile is not None:
            _synth_profile(out, cases, profile, seed, shape, spacing, unlabeled, shift.value)
            return
        folders = synthesize_dataset(
            out,
            cases,
            layout.value,
            seed,
            shape,
            spacing=spacing,
            unlabeled=unlabeled,
            shift=shift.value,
            progress=True,
            start_id=default_start_id(seed) if start_id is None else start_id,
        )
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"wrote {len(folders)} {layout.value} cases to {out}")


def _synth_profile(out, cases, profile, seed, shape, spacing, unlabeled, shift) -> None:
    """``data synth --profile``: only the post-treatment profile adds something (RC)."""
    from bratslab.data.profiles import get_profile
    from bratslab.data.synth_post import synthesize_post_treatment

    name = get_profile(profile).name
    if name != "brats2024-gli":
        raise ValueError(
            f"--profile {profile}: synth writes brats2024-gli (post-treatment) cases; use "
            "--layout for the 2021/2023 conventions"
        )
    folders = synthesize_post_treatment(
        out, cases, seed, shape, spacing=spacing, unlabeled=unlabeled, shift=shift
    )
    typer.echo(f"wrote {len(folders)} {name} cases to {out}")


def _print_failures(failures) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len({f.case for f in failures})} case(s) quarantined")
    for col in ("case", "file", "reason"):
        table.add_column(col, overflow="fold")
    for f in failures:
        table.add_row(f.case, Path(f.file).name if f.file else "", f.reason)
    Console(stderr=True).print(table)


def validation_report(raw: Path, cases, failures) -> dict:
    """What ``data validate --json`` prints: counts, the case ids that passed and were
    quarantined, and every failure as in ``failures.json``."""
    bad = {f.case for f in failures}
    return {
        "raw": str(raw),
        "total": len(cases),
        "ok": sum(c.id not in bad for c in cases),
        "ok_cases": [c.id for c in cases if c.id not in bad],
        "quarantined": [c.id for c in cases if c.id in bad],
        "failures": [f.to_dict() for f in failures],
    }


@data_app.command("validate", epilog=EXIT_DOC)
def validate(
    raw: Path = typer.Argument(
        ..., help="Raw dataset folder (BraTS 2021, 2023+ or an nnU-Net raw DatasetXXX_Name)."
    ),
    failures_json: Path | None = typer.Option(
        None, "--failures", help="Also write the failures to this JSON file."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print a JSON report on stdout (total, ok, ok_cases, quarantined, failures) "
        "instead of the summary and table; the exit status is the same.",
    ),
    profile: str | None = typer.Option(None, "--profile", help=PROFILE_HELP),
) -> None:
    """Check every case (files, gzip CRC, header, shapes, affines, NaN/Inf, labels)."""
    import dataclasses

    from rich.progress import track

    from bratslab import atomic
    from bratslab.data.discovery import discover_cases
    from bratslab.data.profiles import get_profile
    from bratslab.data.validate import empty_case_folders, load_case

    try:
        name = get_profile(profile).name if profile else None
        cases = discover_cases(raw, name)
        if name:
            cases = [dataclasses.replace(c, profile=name) for c in cases]
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if not cases:
        _fail(f"{raw}: no BraTS case found")
    failures = empty_case_folders(raw, cases)
    for case in track(cases, description="validate", transient=True, disable=as_json):
        _, bad = load_case(case)
        failures.extend(bad)
    if failures_json:
        atomic.write_json(failures_json, [f.to_dict() for f in failures])
    if as_json:
        typer.echo(json.dumps(validation_report(raw, cases, failures), indent=2))
    else:
        n_ok = sum(c.id not in {f.case for f in failures} for c in cases)
        typer.echo(f"{n_ok}/{len(cases)} cases OK")
        if failures:
            _print_failures(failures)
    if failures:
        raise typer.Exit(1)


@data_app.command("preprocess", epilog=EXIT_DOC)
def preprocess(
    raw: Path = typer.Argument(
        ..., help="Raw dataset folder (BraTS 2021, 2023+ or an nnU-Net raw DatasetXXX_Name)."
    ),
    out: str = typer.Argument(
        ...,
        help="Store folder to write (created; reruns resume), or s3://bucket/prefix: built in "
        "this node's cache folder and uploaded (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).",
    ),
    workers: int = typer.Option(
        2, "--workers", "-w", min=0, help="Cases in flight at once (Ray tasks); 0 = no Ray."
    ),
    min_size: int | None = typer.Option(
        None,
        "--min-size",
        min=0,
        help="Pad each volume symmetrically up to N^3 voxels (0: no padding). Default 128.",
    ),
    percentile_rescale: bool = typer.Option(
        False, "--percentile-rescale", help="Clip to the 2nd-98th percentile, rescale to 0-255."
    ),
    dtype: DtypeChoice | None = typer.Option(
        None, "--dtype", help="Storage dtype of the image arrays. Default float16."
    ),
    no_crop: bool = typer.Option(False, "--no-crop", help="Keep the full field of view."),
    no_zscore: bool = typer.Option(False, "--no-zscore", help="Skip z-score normalisation."),
    no_mask: bool = typer.Option(
        False, "--no-mask", help="Do not append the foreground mask channel."
    ),
    folds: int | None = typer.Option(
        None, "--folds", min=1, help="Folds of the k-fold split. Default 5."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML PreprocessConfig; options given on the command line win."
    ),
    no_ray: bool = typer.Option(False, "--no-ray", help="Run in this process, without Ray."),
    profile: str | None = typer.Option(None, "--profile", help=PROFILE_HELP),
    splits: Path | None = typer.Option(
        None,
        "--splits",
        help="nnU-Net splits_final.json (nnUNet_preprocessed/DatasetXXX/): the store's folds "
        "become exactly these.",
    ),
) -> None:
    """Validate and preprocess every case into {id}_x/_y/_meta files + dataset.json (on Ray)."""
    from bratslab.config import ConfigError, load_yaml, validate
    from bratslab.data.config import PreprocessConfig
    from bratslab.data.preprocess_tasks import run_preprocess
    from bratslab.data.remote import is_remote, parse_uri

    if not raw.is_dir():
        _fail(f"{raw}: no such folder")
    try:  # an s3:// store stays a URI: never the local folder ./s3:/bucket/...
        target: str | Path = str(parse_uri(out)) if is_remote(out) else Path(out)
    except ConfigError as e:
        _fail(str(e))
    try:
        data = load_yaml(config) if config else {}
    except ConfigError as e:
        _fail(str(e))
    if min_size is not None:
        data["min_size"] = min_size
    if dtype is not None:
        data["dtype"] = dtype.value
    if folds is not None:
        data["num_folds"] = folds
    if percentile_rescale:
        data["percentile_rescale"] = True
    if no_crop:
        data["crop_foreground"] = False
    if no_zscore:
        data["zscore"] = False
    if no_mask:
        data["foreground_channel"] = False
    try:
        cfg = validate(PreprocessConfig, data, str(config or "command line"))
    except ConfigError as e:
        _fail(str(e))
    try:
        report = run_preprocess(
            raw,
            target,
            cfg,
            workers,
            use_ray=not no_ray and workers > 0,
            profile=profile,
            splits=splits,
        )
    except (ValueError, ConfigError) as e:
        _fail(str(e))
    except OSError as e:  # the object store refused or is unreachable (s3:// output)
        typer.secho(f"{out}: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    n_ok = len(report.processed) + len(report.skipped)
    if n_ok + len(report.quarantined) == 0:
        _fail(f"{raw}: no BraTS case found")
    typer.echo(
        f"{n_ok} cases in {target} ({len(report.processed)} processed, {len(report.skipped)} "
        f"unchanged), {len(report.quarantined)} quarantined, {report.wall_s:.1f} s"
    )
    if report.uri:
        typer.echo(f"built in {report.out}; {report.uploaded} files uploaded to {report.uri}")
    if report.failures:
        _print_failures(report.failures)
    raise typer.Exit(report.exit_code)


@data_app.command("profiles")
def profiles(
    as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON."),
) -> None:
    """List the challenge profiles: labels, regions, lesion-wise metric settings."""
    from rich.console import Console
    from rich.table import Table

    from bratslab.data.profiles import PROFILES

    if as_json:
        typer.echo(json.dumps([p.model_dump(mode="json") for p in PROFILES.values()], indent=2))
        return
    table = Table(title="challenge profiles (--profile NAME or alias)")
    for col in ("name", "aliases", "labels", "regions", "lesion-wise (default; brats2023 d, T)"):
        table.add_column(col, overflow="fold")
    for p in PROFILES.values():
        lw = p.lesionwise
        table.add_row(
            p.name,
            ", ".join(p.aliases),
            ", ".join(f"{v} {n}" for v, n in sorted(p.labels.items())),
            ", ".join(f"{r.upper()}={{{','.join(map(str, ls))}}}" for r, ls in p.regions.items()),
            f"{lw.family}; d={lw.dilation}, T={lw.min_size_mm3:g} mm³",
        )
    Console().print(table)


def show_fingerprint(store, console=None) -> None:
    """Print a store's cases, fingerprint, patch size and folds readably (also used by demo)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    m = store.manifest
    fp = m["fingerprint"]
    labeled = store.labeled_ids()
    con.print(
        f"[bold]{store.path}[/bold]  {len(store)} cases ({len(labeled)} labelled), "
        f"channels {', '.join(store.channels)}, dtype {m['dtype']}"
    )
    con.print(f"profile {store.profile.name}: {store.profile.description}")
    if m.get("quarantined"):
        con.print(f"quarantined: {', '.join(m['quarantined'])}")
    if not fp.get("num_cases"):
        return
    aniso = " (anisotropic)" if fp["anisotropic"] else ""
    con.print(
        f"median cropped shape {fp['median_cropped_shape']} voxels, "
        f"spacing {fp['spacing']} mm{aniso}"
    )
    con.print(
        f"suggested patch size {m['patch_size']}, {m['num_folds']} folds "
        f"(val sizes {[len(f['val']) for f in m['folds']]})"
    )
    table = Table(title="intensity of non-zero voxels (median over cases)")
    for col in ("modality", "mean", "std", "p0.5", "p99.5", "min", "max"):
        table.add_column(col, justify="right")
    keys = ("mean", "std", "p00_5", "p99_5", "min", "max")
    for mod in [c for c in store.channels if c in fp["intensity"]]:  # channel order
        st = fp["intensity"][mod]
        table.add_row(mod, *(f"{st[k]:.1f}" for k in keys))
    con.print(table)
    con.print(f"fingerprint hash {m['fingerprint_hash'][:16]}…")


@data_app.command("fingerprint")
def fingerprint(
    store: Path = typer.Argument(..., help="A preprocessed store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON instead."),
) -> None:
    """Print a store's fingerprint, patch size and folds readably."""
    from bratslab.data.store import Store

    try:
        s = Store(store)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if as_json:
        keys = ("fingerprint", "fingerprint_hash", "patch_size", "num_folds", "folds")
        typer.echo(json.dumps({k: s.manifest[k] for k in keys}, indent=2))
        return
    show_fingerprint(s)
