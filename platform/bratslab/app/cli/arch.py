"""``bratslab arch ...``: inspect the model zoo's architectures."""

from __future__ import annotations

import json

import typer

arch_app = typer.Typer(help="Inspect the model zoo's architectures.", no_args_is_help=True)


@arch_app.command("describe")
def describe(
    arch: str = typer.Argument(..., help="Architecture: unet, segresnet or mednext."),
    size: str | None = typer.Option(None, "--size", help="MedNeXt preset: S, B, M or L."),
    kernel_size: int | None = typer.Option(
        None, "--kernel-size", help="Kernel size (MedNeXt 3/5/7, U-Net 3/5)."
    ),
    expansion: int | None = typer.Option(
        None, "--expansion", help="MedNeXt expansion ratio R for every stage (overrides preset)."
    ),
    in_channels: int = typer.Option(5, "--in-channels", help="Input channels (4, or 5 with mask)."),
    out_channels: int = typer.Option(
        3, "--out-channels", help="Output channels: 3 regions, or the number of labels."
    ),
    patch: tuple[int, int, int] = typer.Option(
        (128, 128, 128), "--patch", help="Patch size X Y Z (voxels) for the FLOP count."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameter count, GFLOPs at the patch and parameters per group."""
    from bratslab.config import validate
    from bratslab.models.config import ARCHS, ModelConfig
    from bratslab.models.describe import describe_model

    if arch not in ARCHS:
        raise typer.BadParameter(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    data: dict = {
        "arch": arch,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "output": "regions" if out_channels == 3 else "labels",
    }
    if arch != "mednext" and (size is not None or expansion is not None):
        raise typer.BadParameter("--size and --expansion apply to mednext only")
    if arch == "segresnet" and kernel_size is not None:
        raise typer.BadParameter("--kernel-size applies to mednext and unet only")
    sub: dict = {}
    if size is not None:
        sub["size"] = size.upper()
    if kernel_size is not None:
        sub["kernel_size"] = kernel_size
    if expansion is not None:
        sub["expansion"] = expansion
    if sub:
        data[arch] = sub
    cfg = validate(ModelConfig, data, "command-line options")
    try:
        info = describe_model(cfg, patch)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_table(info)


def _print_table(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    patch = "x".join(str(p) for p in info["patch"])
    console.print(
        f"[bold]{info['arch']}[/bold]  params {info['params'] / 1e6:.3f} M  |  "
        f"{info['gmacs']:.1f} GFLOPs at {patch} (paper convention: 1 multiply-add = 1 FLOP; "
        f"{info['gflops']:.1f} counting 2)"
    )
    table = Table("group", "params", "share")
    for name, n in info["params_by_group"].items():
        table.add_row(name, f"{n:,}", f"{100 * n / max(info['params'], 1):.1f}%")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``arch`` group to the root app."""
    app.add_typer(arch_app, name="arch")
