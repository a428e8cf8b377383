"""What a short ``bratslab train`` costs on a local Ray instance, with and without the two Ray
processes bratslab does not start there.

Each run is ``bratslab train jobs/smoke.yaml`` for 1 epoch of 2 steps (2 workers, 5 tiny
synthetic cases) in a fresh work folder, so Ray's start, Ray Train's processes and MLflow's
store creation are most of it: the part of every run that is not training. Arms, interleaved,
each changing one thing against bratslab's defaults:

- ``bratslab``: as shipped (no prestarted Ray workers, no Ray Train preemption watcher);
- ``prestart``: Ray's default of prestarting Python workers as the driver connects
  (``RAY_prestart_worker_first_driver=1``); they have the default runtime env, so no bratslab
  task can use them;
- ``watcher``: Ray Train's preemption watcher on (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1``),
  one more actor per worker-group start.

CPU seconds are summed over the command's whole process tree (sampled every 0.1 s, so
processes that live less than that are missed alike in every arm). Usage::

    python benchmarks/bench_run_start.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRATSLAB = Path(sys.executable).with_name("bratslab")
ARMS = {
    "bratslab": {},
    "prestart": {"RAY_prestart_worker_first_driver": "1"},
    "watcher": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"},
}
TRAIN = ["training.epochs=1", "training.steps_per_epoch=2", "data.max_val_cases=1"]


def _tree_cpu(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Run ``argv``; (wall seconds, CPU seconds of it and every descendant)."""
    import ray  # noqa: F401, I001  (Ray's bundled psutil on sys.path)
    import psutil  # noqa: I001

    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    root, cpu = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            try:
                t = p.cpu_times()
                cpu[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                pass
        time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return time.monotonic() - t0, sum(cpu.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-run-start-"))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BRATSLAB_", "RAY_", "MLFLOW_"))
    }
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    shutil.copytree(ROOT / "jobs", work / "jobs")
    for cmd in (["synth", "raw", "--cases", "5", "--shape", "48", "48", "40"],
                ["preprocess", "raw", "store", "--no-ray", "--min-size", "32"]):  # fmt: skip
        subprocess.run([str(BRATSLAB), "data", *cmd], env=env, cwd=work, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
    for rep in range(args.reps):
        for arm, extra in ARMS.items():
            home = work / f"home-{arm}-{rep}"
            run_env = {**env, **extra, "BRATSLAB_HOME": str(home)}
            argv = [str(BRATSLAB), "train", "jobs/smoke.yaml", "--set", "data.store=store"]
            argv += [a for s in TRAIN for a in ("--set", s)]
            wall, cpu = _tree_cpu(argv, run_env, work)
            results[arm].append((wall, cpu))
            print(f"rep {rep} {arm:9s} wall {wall:5.1f} s  CPU {cpu:5.1f} s  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    base_wall = statistics.median(w for w, _ in results["bratslab"])
    base_cpu = statistics.median(c for _, c in results["bratslab"])
    print(
        f"\n{'arm':10s} {'wall s':>7s} {'CPU s':>7s} {'CPU ÷ bratslab':>15s}   "
        f"(medians of {args.reps})"
    )
    for arm, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(
            f"{arm:10s} {wall:7.1f} {cpu:7.1f} {cpu / base_cpu:15.2f}   "
            f"wall ÷ {wall / base_wall:.2f}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
