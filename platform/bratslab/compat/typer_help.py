"""``--help`` that reads like a command line, not like type annotations (Typer 0.29.2).

Typer 0.29 prints a type for every parameter: ``<bool>`` beside a flag, which takes no value,
``<list[str]>`` beside a repeatable option, and required arguments as ``{job}`` in the usage
line. bratslab shows flags bare, a repeatable option's element type (its help says it
repeats), and arguments the click way (``JOB``, ``[NAME]``, ``RUN_IDS...``). These are private
methods of ``typer.core``; ``tests/unit/compat/test_typer_help.py`` fails when they move.
"""

from __future__ import annotations

import re

from typer.core import TyperArgument, TyperOption

_LIST = re.compile(r"<list\[(.+)\]>")


def _shown_type(shown: str | None) -> str | None:
    """``<list[str]>`` → ``<str>``; anything else unchanged."""
    return _LIST.sub(r"<\1>", shown) if shown else shown


def _option_type(self: TyperOption, ctx) -> str | None:
    if self.is_flag and self.metavar is None:
        return None  # a flag takes no value
    return _shown_type(_ORIGINAL_OPTION(self, ctx))


def _argument_type(self: TyperArgument, ctx) -> str | None:
    return _shown_type(_ORIGINAL_ARGUMENT(self, ctx))


def _usage_name(self: TyperArgument) -> str:
    name = self.display_name_raw.upper()
    if not self.required:
        name = f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


_ORIGINAL_OPTION = TyperOption.display_type_rich
_ORIGINAL_ARGUMENT = TyperArgument.display_type_rich


def install() -> None:
    """Patch Typer's help rendering (idempotent)."""
    TyperOption.display_type_rich = _option_type
    TyperArgument.display_type_rich = _argument_type
    TyperArgument._usage_display_name = _usage_name
