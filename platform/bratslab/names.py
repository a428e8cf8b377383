"""Names that become folder names: one rule, checked in one place.

A job, run or sweep name is joined onto a root folder (``$BRATSLAB_HOME/ray_results/<name>``,
``$BRATSLAB_HOME/sweeps/<name>``). A name with a separator or ``..`` would put that folder
outside the root (``--name ../../x``, ``--name /abs``), so every name that becomes a path is
checked here: one path component of letters, digits, ``_``, ``.`` and ``-`` that starts with a
letter or digit (the job spec's ``name`` pattern).
"""

from __future__ import annotations

import re

from bratslab.config import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX = 255  # bytes of one path component on common filesystems (ext4, xfs, APFS)
_NAME = re.compile(NAME_PATTERN)
RULE = (
    "letters, digits, '_', '.' and '-', starting with a letter or digit, "
    f"at most {NAME_MAX} characters (it names a folder)"
)


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe single folder name, else raise.

    Args:
        value: the name, e.g. from ``--name``.
        what: how the user wrote it, for the message (``"--name"``, ``"sweep name"``).

    Raises:
        ConfigError: naming ``what``, the value and the rule (the CLI exits 2).
    """
    # fullmatch: "$" in the pattern would also accept a trailing newline.
    if (
        not isinstance(value, str)
        or value in (".", "..")
        or len(value) > NAME_MAX
        or _NAME.fullmatch(value) is None
    ):
        raise ConfigError(f"{what} {value!r}: not a valid name; use {RULE}")
    return value
