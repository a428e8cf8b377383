"""Ray Data patch loader (``data.loader: ray``): samples/s with 1 vs 2 loader CPUs.

The pipeline is the one training uses (:func:`bratslab.data.patch_stream.patch_dataset`,
consumed as a Train worker does: ``streaming_split(1, equal=True)[0].iter_torch_batches``), on a
synthetic store, with the full scanner-shift augmentation of ``jobs/train_segresnet.yaml``,
batch 2, 5 channels. The arms differ in one thing: ``data.loader_cpus`` (1 → one actor, 2 → two
actors of one CPU each).

Every round runs both arms once, the order rotated each round (as ``bench_tta.py`` does), so a
change of machine load hits both alike. Each run starts a fresh pipeline of ``--batches``
batches and notes when each arrives; its rate is that of the middle half (batches n/4 to 3n/4):
the first quarter holds actor start-up and the last the end-of-stream flush of what
``streaming_split(equal=True)`` held back. The speed-up is the median over rounds of the
per-round ratio of samples/s (2 CPUs / 1 CPU).

Also measured, in this process without Ray: CPU-seconds per sample of the same sampler +
augmentation (one thread), and from it the loader CPUs one GPU needs at an assumed step time
(``--step-s``, default 0.35 s per MedNeXt-B 128³ batch-2 step on an H100: an assumption, not
a measurement here).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_loader.py`` (128³ patches) or with
``--quick`` (64³ patches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bratslab.data.config import DataSection, PreprocessConfig
from bratslab.data.loader import case_rows
from bratslab.data.patch_pipeline import PatchMaker, choose_cases, pool_size
from bratslab.data.patch_stream import patch_dataset
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.store import Store
from bratslab.data.synth import synthesize_dataset
from bratslab.jobs.spec import load_job

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2
ARMS = (1.0, 2.0)  # data.loader_cpus


def _store(tmp: Path, patch: int, cases: int) -> list[dict]:
    """A synthetic store whose volumes (padded to the patch) hold a patch anywhere."""
    shape = (patch + 24, patch + 24, patch + 8)
    synthesize_dataset(tmp / "raw", cases, shape=shape, seed=3)
    cfg = PreprocessConfig(min_size=[patch] * 3, num_folds=2)
    run_preprocess(tmp / "raw", tmp / "store", cfg, use_ray=False, progress=False)
    store = Store(tmp / "store")
    return case_rows(store, 0, "train") + case_rows(store, 0, "val")


def _augment() -> dict:
    job = load_job(ROOT / "jobs" / "train_segresnet.yaml", [f"data.store={ROOT}"])
    return job.data.augment.model_dump(mode="json")


def cpu_per_sample(rows, patch: int, augment: dict, n: int) -> tuple[float, float]:
    """``(CPU s, wall s)`` per sample of the pipeline's UDF, called here on one thread."""
    maker = PatchMaker(
        patch_size=[patch] * 3, in_channels=5, fg_fraction=1 / 3, augment=augment, seed=0
    )
    batch = choose_cases({"id": np.arange(n)}, cases=rows, seed=0, per_epoch=n)
    maker({k: v[:1] for k, v in batch.items()})  # warm-up: imports, foreground caches
    t0, c0 = time.perf_counter(), time.process_time()
    maker(batch)
    return (time.process_time() - c0) / n, (time.perf_counter() - t0) / n


def run_arm(rows, patch: int, augment: dict, cpus: float, batches: int, seed: int) -> float:
    """Samples/s of one fresh pipeline of ``batches`` batches, over its middle half."""
    data = DataSection(store="store", loader="ray", loader_cpus=cpus, augment=augment)
    ds = patch_dataset(
        rows,
        data,
        patch_size=[patch] * 3,
        in_channels=5,
        seed=seed,
        epochs=1,
        steps_per_epoch=batches,
        batch_size=BATCH,
        num_workers=1,
    )
    shard = ds.streaming_split(1, equal=True)[0]  # what Ray Train hands a single worker
    stream = shard.iter_torch_batches(batch_size=BATCH, prefetch_batches=2, device="cpu")
    arrived = []
    for batch in stream:
        assert batch["image"].shape == (BATCH, 5, patch, patch, patch)
        arrived.append(time.perf_counter())
    assert len(arrived) == batches, len(arrived)
    i0, i1 = batches // 4, 3 * batches // 4
    return (i1 - i0) * BATCH / (arrived[i1] - arrived[i0])


def run_thread_arm(rows, patch: int, augment: dict, batches: int, seed: int) -> float:
    """Samples/s of ``data.loader: thread`` (one sampling thread feeding a prefetch queue in
    the training process), over the middle half of ``batches``, as :func:`run_arm` times it."""
    from bratslab.config import validate
    from bratslab.data.config import AugmentConfig
    from bratslab.data.loader import PatchSampler, epoch_batches, prefetch

    sampler = PatchSampler([patch] * 3, 5, 1 / 3, seed)
    aug = validate(AugmentConfig, augment, "augment")
    gen = epoch_batches(
        rows, steps=batches, batch_size=BATCH, sampler=sampler, augment=aug, seed=seed
    )
    arrived = []
    for x, _ in prefetch(gen, 2):
        assert x.shape == (BATCH, 5, patch, patch, patch)
        arrived.append(time.perf_counter())
    i0, i1 = batches // 4, 3 * batches // 4
    return (i1 - i0) * BATCH / (arrived[i1] - arrived[i0])


def rounds(rows, patch, augment, args) -> dict[float | str, list[float]]:
    """Interleaved rounds: every arm once per round, the order rotated by one each round."""
    arms = (*ARMS, "thread")
    rates: dict[float | str, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in order:
            if arm == "thread":
                rates[arm].append(run_thread_arm(rows, patch, augment, args.batches, r))
            else:
                rates[arm].append(run_arm(rows, patch, augment, arm, args.batches, r))
        line = ", ".join(f"{c} {rates[c][-1]:.2f}/s" for c in arms)
        print(f"round {r + 1}/{args.rounds}: {line}", flush=True)
    return rates


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64³ patches instead of 128³.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (default 3).")
    p.add_argument("--batches", type=int, help="Batches per run (default 48 quick, 24 full).")
    p.add_argument("--cases", type=int, default=4, help="Synthetic cases in the store.")
    p.add_argument("--step-s", type=float, default=0.35, help="Assumed GPU step time (s).")
    p.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    return p.parse_args()


def main() -> None:
    args = _parse()
    args.batches = max(args.batches or (48 if args.quick else 24), 4)
    patch = 64 if args.quick else 128
    os.environ.setdefault("BRATSLAB_HOME", tempfile.mkdtemp(prefix="bench-loader-"))
    from bratslab.cluster import ensure_ray

    augment = _augment()
    with tempfile.TemporaryDirectory() as tmp:
        rows = _store(Path(tmp), patch, args.cases)
        cpu_s, wall_s = cpu_per_sample(rows, patch, augment, n=8 if args.quick else 4)
        ensure_ray(num_cpus=max(os.cpu_count() or 1, 4))
        rates = rounds(rows, patch, augment, args)
    _report(args, patch, rates, cpu_s, wall_s)


def _report(args, patch: int, rates: dict[float, list[float]], cpu_s: float, wall_s: float):
    ratios = [b / a for a, b in zip(rates[1.0], rates[2.0], strict=True)]
    med = statistics.median(ratios)
    need = BATCH / args.step_s  # samples/s one GPU consumes
    print(
        f"\npatch {patch}³, 5 channels, batch {BATCH}, augment: jobs/train_segresnet.yaml, "
        f"{args.rounds} rounds x {args.batches} batches (middle half timed), "
        f"{os.cpu_count()} cores\n"
    )
    print("| loader_cpus | actors | median samples/s | per-round |")
    print("|---|---|---|---|")
    for c in ARMS:
        actors, _ = pool_size(c, 1)
        per = ", ".join(f"{v:.2f}" for v in rates[c])
        print(f"| {c:g} | {actors} | {statistics.median(rates[c]):.2f} | {per} |")
    thread = [b / a for a, b in zip(rates["thread"], rates[1.0], strict=True)]
    print(
        f"| thread | 0 (a thread of the training process) | "
        f"{statistics.median(rates['thread']):.2f} | "
        f"{', '.join(f'{v:.2f}' for v in rates['thread'])} |"
    )
    print(
        f"\nray (1 loader CPU) vs thread loader: {statistics.median(thread):.2f}x (median of "
        f"per-round ratios; range {min(thread):.2f}-{max(thread):.2f}); one change: the loader"
    )
    met = "met" if med >= 1.8 else "NOT met"
    print(
        f"\nspeed-up 1 -> 2 loader CPUs: {med:.2f}x (median of per-round ratios; range "
        f"{min(ratios):.2f}-{max(ratios):.2f}); target >= 1.8x: {met}"
    )
    print(
        f"one-thread cost (no Ray): {cpu_s:.3f} CPU-s/sample ({1 / cpu_s:.2f} samples/s per "
        f"core), {wall_s:.3f} wall-s/sample"
    )
    print(
        f"at an assumed {args.step_s} s/step (batch {BATCH}) a GPU consumes {need:.2f} "
        f"samples/s -> {need * cpu_s:.1f} loader CPUs per GPU at this cost (no headroom)"
    )
    if args.json:
        out = {
            "patch": patch,
            "rates": {str(c): v for c, v in rates.items()},
            "ray1_vs_thread": statistics.median(thread),
            "speedup": med,
            "ratios": ratios,
            "cpu_s_per_sample": cpu_s,
            "wall_s_per_sample": wall_s,
            "step_s": args.step_s,
            "loader_cpus_per_gpu": need * cpu_s,
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
