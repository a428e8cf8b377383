"""``bratslab arch describe`` through the real Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bratslab.app.main import app

runner = CliRunner()


def test_describe_mednext_json():
    result = runner.invoke(
        app,
        [
            "arch",
            "describe",
            "mednext",
            "--size",
            "B",
            "--kernel-size",
            "5",
            "--in-channels",
            "1",
            "--out-channels",
            "14",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert abs(info["params"] / 1e6 - 11.0) / 11.0 < 0.02
    assert info["patch"] == [128, 128, 128]
    assert list(info["params_by_group"])[0] == "stem"
    assert sum(info["params_by_group"].values()) == info["params"]


def test_describe_table_for_every_arch():
    for arch in ("unet", "segresnet", "mednext"):
        result = runner.invoke(app, ["arch", "describe", arch, "--patch", "64", "64", "64"])
        assert result.exit_code == 0, result.output
        assert "GFLOPs at 64x64x64" in result.output
        assert "bottleneck" in result.output


def _flat(text: str) -> str:
    """Rich wraps error panels; join the words back for matching."""
    return " ".join(text.replace("│", " ").split())


def test_describe_errors():
    result = runner.invoke(app, ["arch", "describe", "mednext", "--patch", "100", "128", "128"])
    assert result.exit_code == 2 and "multiple of 16" in _flat(result.output)
    result = runner.invoke(app, ["arch", "describe", "unet", "--size", "S"])
    assert result.exit_code == 2 and "mednext only" in _flat(result.output)
    result = runner.invoke(app, ["arch", "describe", "vnet"])
    assert result.exit_code == 2 and "unknown arch" in _flat(result.output)
