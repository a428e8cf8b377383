"""Preprocessing throughput (cases/min) with 1 and 2 Ray workers, and where the time goes.

Synthesises N full-size (240x240x155) cases, then:

1. phase breakdown, in process, per case: reading the files, gzip decompression (incl. CRC),
   validation (header, shapes, affines, labels), normalisation (crop, z-score, pad, mask) and
   writing the .npy/.json outputs;
2. ``run_preprocess`` through Ray with ``--workers 1`` and ``--workers 2`` into fresh stores
   (Ray is started and its workers warmed up before timing), and in process without Ray.

    .venv/bin/python benchmarks/bench_preprocess.py [--cases 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bratslab.data import validate as V  # noqa: E402
from bratslab.data.config import PreprocessConfig  # noqa: E402
from bratslab.data.discovery import discover_cases  # noqa: E402
from bratslab.data.preprocess import preprocess_loaded, write_case  # noqa: E402
from bratslab.data.preprocess_tasks import run_preprocess  # noqa: E402
from bratslab.data.synth import synthesize_dataset  # noqa: E402


class _Clock:
    """Wall and CPU time (this process) since construction / the last ``lap()``."""

    def __init__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        out = (t - self.t, c - self.c)
        self.t, self.c = t, c
        return out


def _phases(cases, out: Path, cfg: PreprocessConfig) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per case of each phase (in process, one case at a time)."""
    names = ("read", "decompress", "validate", "normalise", "write")
    acc: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for case in cases:
        paths = list(case.all_files().values())
        clock = _Clock()
        blobs = [p.read_bytes() for p in paths]
        read = clock.lap()
        for p, b in zip(paths, blobs, strict=True):
            V._gunzip(b, p, lambda head: 1 << 31)
        dec = clock.lap()
        loaded, failures = V.load_case(case)  # reads + decompresses again, then validates
        whole = clock.lap()
        assert not failures
        pre = preprocess_loaded(loaded, cfg)
        norm = clock.lap()
        write_case(out, pre)
        acc["read"].append(read)
        acc["decompress"].append(dec)
        rest = zip(whole, read, dec, strict=True)
        acc["validate"].append(tuple(max(0.0, w - r - d) for w, r, d in rest))
        acc["normalise"].append(norm)
        acc["write"].append(clock.lap())
    return {
        k: (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
        for k, vals in acc.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=6, help="Full-size cases to synthesise.")
    args = ap.parse_args()
    cfg = PreprocessConfig()

    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        synthesize_dataset(tmp / "raw", args.cases, "brats2023", seed=0)
        t_synth = (time.perf_counter() - t0) / args.cases
        cases = discover_cases(tmp / "raw")
        phases = _phases(cases, tmp / "phases", cfg)

        from bratslab.cluster import ensure_ray

        ensure_ray()
        synthesize_dataset(tmp / "warm", 2, "brats2023", seed=1, shape=(64, 64, 48))
        run_preprocess(tmp / "warm", tmp / "warm_out", cfg, 2, progress=False)  # start workers

        rates = {}
        loads = [os.getloadavg()[0]]
        for label, workers, use_ray in (("Ray, --workers 1", 1, True),
                                        ("Ray, --workers 2", 2, True),
                                        ("in process (--no-ray)", 1, False)):  # fmt: skip
            out = tmp / f"store_{workers}_{use_ray}"
            t0 = time.perf_counter()
            rep = run_preprocess(tmp / "raw", out, cfg, workers, use_ray=use_ray, progress=False)
            wall = time.perf_counter() - t0
            loads.append(os.getloadavg()[0])
            assert rep.exit_code == 0 and len(rep.processed) == args.cases
            rates[label] = (wall, 60 * args.cases / wall)
        t0 = time.perf_counter()
        rep = run_preprocess(tmp / "raw", tmp / "store_2_True", cfg, 2, progress=False)
        t_resume = time.perf_counter() - t0
        assert len(rep.skipped) == args.cases

    total_w = sum(w for w, _ in phases.values())
    total_c = sum(c for _, c in phases.values())
    print(f"{args.cases} synthetic cases 240x240x155 (4 modalities + seg), {os.cpu_count()} CPUs")
    print(f"1-min load average during the runs: {', '.join(f'{x:.1f}' for x in loads)}")
    print(f"synthesis: {t_synth:.2f} s per case (generate + write 5 .nii.gz)\n")
    print("| phase (per case, in process) | median wall s | median CPU s | share of CPU |")
    print("|---|---|---|---|")
    for k, (w, c) in phases.items():
        print(f"| {k} | {w:.3f} | {c:.3f} | {100 * c / total_c:.0f} % |")
    print(f"| total | {total_w:.3f} | {total_c:.3f} | |\n")
    print("| run | wall s | cases/min |")
    print("|---|---|---|")
    for label, (wall, rate) in rates.items():
        print(f"| {label} | {wall:.1f} | {rate:.1f} |")
    print(f"| resume, all {args.cases} unchanged (hash check only) | {t_resume:.2f} | - |")


if __name__ == "__main__":
    main()
