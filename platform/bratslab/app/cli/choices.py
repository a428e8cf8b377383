"""Options that take one of a fixed set of values, shared by the commands that have them.

A ``Literal`` annotation makes Typer list the values in ``--help`` and refuse any other with
exit 2 naming the allowed ones. ``--device`` takes any device torch knows and ``--challenge``
is read as the scoring code reads it (any case, ``BraTS-`` prefix allowed), so callbacks check
those.
"""

from __future__ import annotations

from typing import Literal

import typer

TTAChoice = Literal["none", "flips", "flips+rot90"]
# The keys of bratslab.evaluate.lesionwise.CHALLENGES (a unit test keeps them equal; that
# module loads SciPy, which `bratslab --help` should not).
CHALLENGES = ("gli", "ssa", "ped", "men", "met")
CHALLENGE_HELP = (
    "Lesion-wise parameters: gli, ssa, ped (dilation 3, volume threshold 50 mm³), "
    "men (1, 50 mm³), met (1, 2 mm³)."
)
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."


def check_device(value: str) -> str:
    """``--device``'s callback: ``auto`` or a device torch knows (``cpu``, ``cuda``,
    ``cuda:N``, ``mps``...), read by the same function that later picks it; else exit 2."""
    if value == "auto":  # no torch import for the default
        return value
    from bratslab.inference.model_loading import resolve_device

    try:
        resolve_device(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a device: auto, cpu, cuda, cuda:N (or another torch device)."
        ) from None
    return value


def check_challenge(value: str) -> str:
    """``--challenge``'s callback: ``gli``, ``GLI`` and ``BraTS-GLI`` are ``gli``; another
    name exits 2 listing the known ones."""
    key = value.lower().removeprefix("brats-")
    if key not in CHALLENGES:
        known = ", ".join(repr(c) for c in CHALLENGES)
        raise typer.BadParameter(f"{value!r} is not one of {known} (any case, BraTS- allowed).")
    return key


def device_option() -> str:
    """A ``--device`` option (default auto), checked before anything is loaded."""
    return typer.Option("auto", "--device", help=DEVICE_HELP, callback=check_device)


def challenge_option() -> str:
    """A ``--challenge`` option (default gli)."""
    return typer.Option(
        "gli",
        "--challenge",
        help=CHALLENGE_HELP,
        metavar="[" + "|".join(CHALLENGES) + "]",
        callback=check_challenge,
    )
