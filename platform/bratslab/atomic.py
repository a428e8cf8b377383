"""Atomic file writes: a temp file in the destination folder, fsync, then ``os.replace``.

A process killed at any moment leaves either the old file or the complete new one, never a
partial file under the final name. Temp files are named ``.<name>.<random>.tmp`` so that a
resumed run can recognise and sweep leftovers (:func:`remove_stale_temps`).

Only regular files are replaced. The rename swaps the directory entry, so an output that exists
as a FIFO, a symlink, a device or a folder would silently become a regular file (a symlink's
target left untouched, a pipe's reader never fed); such outputs are refused with
:class:`OutputPathError` instead, which the CLI reports as a usage error (exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bratslab.config import ConfigError

TMP_SUFFIX = ".tmp"


class OutputPathError(ConfigError):
    """An output path exists but is not a regular file (FIFO, symlink, folder, device)."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, from its ``lstat`` mode; None for a regular file."""
    kinds = (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is absent or a regular file (not a symlink to one).

    Raises:
        OutputPathError: naming the path and what it is.
    """
    path = Path(path)
    try:
        mode = path.lstat().st_mode  # lstat: a symlink is judged itself, not its target
    except FileNotFoundError:
        return path
    kind = _kind(mode)
    if kind is not None:
        raise OutputPathError(
            f"{path}: output exists as {kind}; only a regular file can be replaced "
            "(remove it or choose another output path)"
        )
    return path


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
    """Open a binary temp file beside ``path``; rename it over ``path`` on a clean exit.

    Raises:
        OutputPathError: ``path`` exists and is not a regular file (checked before writing and
            again before the rename).
    """
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_output_path(path)  # something may have appeared there while writing
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


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temp files left by an interrupted writer in ``folder``; returns how many.
    Only regular files are removed (a folder or link of that name is not ours)."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if p.is_symlink() or not p.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n
