"""Atomic file writes: a temp file in the destination folder, fsync, then ``os.replace``.

A process killed at any moment leaves either the old file or the complete new one, never a
partial file under the final name. Temp files are named ``.<name>.<random>.tmp`` so that a
resumed run can recognise and sweep leftovers (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """Mode a plain ``open()`` would give a new file (0666 less the umask)."""
    old = os.umask(0)
    os.umask(old)
    return 0o666 & ~old


# mkstemp creates 0600 files; outputs must be as readable as any other file the user writes
# (Ray workers under another uid, colleagues sharing a store).
_MODE = _file_mode()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary temp file beside ``path``; rename it over ``path`` on a clean exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON deterministically (sorted keys) so identical content gives identical bytes."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temp file; the result is byte-identical to a plain ``np.save``."""
    with atomic_open(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def save_npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temp files left by an interrupted writer in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n
