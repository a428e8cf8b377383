"""Native writes to descriptor 2 go to the log file; Python's sys.stderr still reaches the
terminal (bratslab.native_stderr), checked in a real process whose stderr is a pipe."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_native_writes_go_to_the_file_and_python_lines_stay_on_stderr(tmp_path):
    log = tmp_path / "logs" / "cmd.log"  # its folder does not exist yet
    script = textwrap.dedent(f"""
        import ctypes, os, pathlib, sys
        from bratslab.native_stderr import divert, diverted, restore
        assert divert(pathlib.Path({str(log)!r})) and diverted()
        os.write(2, b"core_worker.cc:2465: native\\n")  # what Ray's C++ core worker does
        ctypes.CDLL(None).dprintf(2, b"from libc\\n")
        print("bratslab line", file=sys.stderr)
        restore()
        os.write(2, b"after restore\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "bratslab line\nafter restore\n"
    assert log.read_text() == "core_worker.cc:2465: native\nfrom libc\n"


def test_a_stderr_that_is_not_descriptor_2_is_left_alone(tmp_path, capsys):
    from bratslab.native_stderr import divert, diverted

    assert not divert(tmp_path / "x.log")  # pytest's capture owns sys.stderr here
    assert not diverted() and not (tmp_path / "x.log").exists()
