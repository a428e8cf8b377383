"""Atomic writes replace regular files only: a FIFO, symlink, folder or device at the output
path is refused with an error naming the path (the CLI maps it to exit 2), and left as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from bratslab import atomic
from bratslab.atomic import OutputPathError, check_output_path, remove_stale_temps, write_text
from bratslab.config import ConfigError


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_missing_or_regular_output_is_written(tmp_path):
    out = tmp_path / "sub" / "out.txt"
    write_text(out, "one")
    write_text(out, "two")
    assert out.read_text() == "two"
    assert _only(out.parent) == ["out.txt"]  # no temp file left


def test_a_fifo_is_refused_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match=rf"^{fifo}: output exists as a FIFO"):
        write_text(fifo, "data")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert _only(tmp_path) == ["out.csv"]


def test_a_symlink_is_refused_and_neither_link_nor_target_changes(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("original")
    link = tmp_path / "out.json"
    os.symlink(target, link)
    with pytest.raises(OutputPathError, match=rf"^{link}: output exists as a symlink"):
        atomic.write_json(link, {"a": 1})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "original"
    assert _only(tmp_path) == ["out.json", "target.json"]


def test_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "out.npy"
    os.symlink(tmp_path / "nowhere", link)
    with pytest.raises(OutputPathError, match="exists as a symlink"):
        atomic.save_npy(link, np.zeros(3))
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_directory_is_refused_and_its_contents_stay(tmp_path):
    folder = tmp_path / "out.png"
    folder.mkdir()
    (folder / "keep").write_text("x")
    with pytest.raises(OutputPathError, match=rf"^{folder}: output exists as a directory"):
        atomic.write_bytes(folder, b"png")
    assert _only(folder) == ["keep"]
    assert _only(tmp_path) == ["out.png"]


def test_a_device_is_refused_before_anything_is_created_beside_it():
    with pytest.raises(OutputPathError, match="^/dev/null: output exists as a character device"):
        write_text("/dev/null", "x")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_the_error_is_a_config_error_so_clis_exit_2():
    assert issubclass(OutputPathError, ConfigError)


def test_check_output_path_accepts_missing_and_regular_files(tmp_path):
    assert check_output_path(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "f").write_text("")
    assert check_output_path(tmp_path / "f") == tmp_path / "f"


def test_remove_stale_temps_removes_only_regular_temp_files(tmp_path):
    (tmp_path / ".a.npy.123.tmp").write_bytes(b"partial")
    (tmp_path / ".b.npy.456.tmp").mkdir()  # not a writer's leftover
    os.symlink(tmp_path / "elsewhere", tmp_path / ".c.npy.789.tmp")
    (tmp_path / "a.npy").write_bytes(b"final")
    assert remove_stale_temps(tmp_path) == 1
    assert _only(tmp_path) == [".b.npy.456.tmp", ".c.npy.789.tmp", "a.npy"]
