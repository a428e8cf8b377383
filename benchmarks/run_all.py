"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``); each prints its own table.

Results with their commands are collected by hand into BENCHMARKS.md; every figure there is a
ratio measured within one run of one script, so machine load affects both sides alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
