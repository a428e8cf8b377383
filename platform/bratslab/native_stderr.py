"""Native (C/C++) writes to standard error go to the command's log file, Python's stay.

Ray's C++ core worker inside the driver prints its ERROR lines straight to file descriptor 2,
where Python's logging never sees them: ``core_worker.cc:2465: Actor with class name:
'MapWorker(Map(CasePredictor))' ... has constructor arguments in the object store`` on every
``predict``, ``core_worker.cc:609: :info_message: Attempting to recover 1 lost objects`` when a
stopped run's workers go. In a quiet command (:mod:`bratslab.console`) :func:`divert` points
descriptor 2 at the log file and gives ``sys.stderr`` a duplicate of the original descriptor,
so every line Python writes (bratslab's console, Typer's errors, a traceback) still reaches the
terminal and only native writes are diverted.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TextIO

_saved: tuple[TextIO, TextIO] | None = None  # (the original sys.stderr, its replacement)


def diverted() -> bool:
    return _saved is not None


def divert(path: Path) -> bool:
    """Descriptor 2 appends to ``path``; ``sys.stderr`` keeps writing where it did.

    Does nothing (returns False) when ``sys.stderr`` is not descriptor 2 (pytest's capture,
    Typer's test runner, an embedding application): those already own both.
    """
    global _saved
    if _saved is not None:
        return True
    old = sys.stderr
    try:
        if old is None or old.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    old.flush()
    keep = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 2)
    finally:
        os.close(target)
    new = open(  # noqa: SIM115 - lives until restore()
        keep, "w", buffering=1, encoding=old.encoding, errors=old.errors or "backslashreplace"
    )
    sys.stderr = new
    _saved = (old, new)
    return True


def restore() -> None:
    """Undo :func:`divert`: descriptor 2 and ``sys.stderr`` as they were."""
    global _saved
    if _saved is None:
        return
    old, new = _saved
    _saved = None
    new.flush()
    os.dup2(new.fileno(), 2)
    sys.stderr = old
    new.close()
