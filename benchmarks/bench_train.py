"""Training benchmarks: Ray Train overhead, data-wait fraction, samples/s per architecture.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--patch 48] [--threads 2 1]
        [--epochs 3] [--arms ARM ...] [--overhead-only] [--out FILE]

1. Ray Train (1 worker, the real ``run_training`` path: case table in the loop config, DDP wrapper,
   per-epoch report + checkpoint) vs a plain PyTorch loop running the same ``train_step`` on the
   same model, patch sampler, augmentation and batch. Steady state = epochs after the first; the
   Ray figure is the worker's own ``time/train_s`` (report/checkpoint/validation excluded, as
   they are per epoch, not per step). Overhead = Ray step time / plain step time - 1. Run
   with each ``--threads`` count: with as many torch threads as cores, any CPU that Ray's own
   processes use stalls the step; with one thread fewer they have a core of their own. The
   worker's CPU time per step (``time/train_cpu_s``) separates work done from waiting.
   ``--arms``: more Ray Train runs, each changing exactly one thing against "Ray Train" (as
   bratslab runs it); see ``ARMS``. Each gets its step time as a ratio to that run. The CPU of
   every Ray process is sampled (``ray_cpu.py``) over the whole run and over its steady-state
   epochs (from the first epoch's report to the last one's).
2. Fraction of step time the worker waited for data (``time/data_wait_frac``).
3. Samples/s per architecture (plain loop; each job's model section, shrunk to CPU size).
4. The smoke job's model with ``training.amp`` off and on (its shipped setting is off).

Everything runs on a synthetic store built in a temporary ``$BRATSLAB_HOME``.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ray_cpu beside this file

ROOT = Path(__file__).resolve().parents[1]

# One change each against "Ray Train" as bratslab runs it (issue 17): the first two undo a cut
# bratslab made (so the ratio shows what the cut saves), the others switch off a part of Ray
# Train through its environment variables (ray/train/v2/_internal/constants.py, Ray 2.60).
ARMS = {
    "ray-data-cases": "case table as a Ray Data dataset (trainer.CASE_TABLE_IN_CONFIG off)",
    "cold-mlflow": "MLflow opened at the first report (trainer.WARM_MLFLOW_IN_CONTROLLER off)",
    "no-progress": "no epoch line on the console / train_log.txt (progress=False)",
    "no-train-metrics": "RAY_TRAIN_METRICS_ENABLED=0 (Train's controller/worker metrics)",
    "no-preemption-watcher": "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 (no drain-polling actor)",
    "health-check-10s": "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=10 (workers polled every 10 s, not 2)",
}
ARM_ENV = {
    "no-train-metrics": {"RAY_TRAIN_METRICS_ENABLED": "0"},
    "no-preemption-watcher": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
    "health-check-10s": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "10"},
}
ARM_SWITCH = {"ray-data-cases": "CASE_TABLE_IN_CONFIG", "cold-mlflow": "WARM_MLFLOW_IN_CONTROLLER"}


def build_store(root: Path, size: int) -> Path:
    from bratslab.data.config import PreprocessConfig
    from bratslab.data.preprocess_tasks import run_preprocess
    from bratslab.data.synth import synthesize_dataset

    synthesize_dataset(root / "raw", 6, shape=(size + 16, size + 16, size + 8), seed=0)
    cfg = PreprocessConfig(min_size=[size] * 3, num_folds=3)
    run_preprocess(root / "raw", root / "store", cfg, use_ray=False, progress=False)
    return root / "store"


def plain_loop(spec, store: Path, steps: int, warmup: int = 3) -> dict[str, float]:
    """The same step as the Ray worker, without Ray: seconds per step and data-wait fraction."""
    from bratslab.data.loader import PatchSampler, case_rows, epoch_batches, prefetch
    from bratslab.data.store import Store
    from bratslab.models.runtime import prepare_model
    from bratslab.models.zoo import build_model
    from bratslab.train.losses import SegmentationLoss
    from bratslab.train.optim import build_optimizer
    from bratslab.train.step import StepContext, train_step

    tr = spec.training
    torch.set_num_threads(spec.scaling.torch_threads or int(spec.scaling.cpus_per_worker))
    cfg = spec.model.model_config_only()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg)
    bundle = build_optimizer(
        model, cfg, tr.optimizer, tr.schedule, total_steps=steps + warmup, steps_per_epoch=steps
    )
    model = prepare_model(model, device)
    model.train()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rows = case_rows(Store(store), spec.data.fold, "train")
    sampler = PatchSampler(tr.patch_size, cfg.in_channels, spec.data.foreground_oversample, 0)
    batches = epoch_batches(
        rows,
        steps=steps + warmup,
        batch_size=tr.batch_size,
        sampler=sampler,
        augment=spec.data.augment,
        seed=0,
    )
    stream = prefetch(batches, spec.data.prefetch_batches)
    loss_fn = SegmentationLoss(cfg.output, tr.deep_supervision_weights)
    ctx = StepContext(
        model=model,
        bundle=bundle,
        loss_fn=loss_fn,
        scaler=scaler,
        device=device,
        amp=tr.amp,
        arch=cfg.arch,  # the worker's precision choice (runtime.CPU_BF16_ARCHS)
        grad_clip=tr.grad_clip,
    )
    wait = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            t0, c0, wait = time.perf_counter(), time.process_time(), 0.0
        tw = time.perf_counter()
        x, y = next(stream)
        wait += time.perf_counter() - tw
        train_step(ctx, x, y)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"step_s": total / steps, "cpu_s": cpu / steps, "wait_frac": wait / total}


def run_arm(spec, arm: str | None):
    """``run_training(spec)`` with ``arm``'s one change (None: as is), restored afterwards.

    The environment variables reach Ray Train's controller and workers: the driver reads
    ``RAY_TRAIN_METRICS_ENABLED`` when it builds the trainer, and passes the others it finds
    set to the controller's runtime environment."""
    import bratslab.train.trainer as trainer

    env = ARM_ENV.get(arm or "", {})
    switch = ARM_SWITCH.get(arm or "")
    saved_env = {k: os.environ.get(k) for k in env}
    saved_switch = getattr(trainer, switch) if switch else None
    os.environ.update(env)
    if switch:
        setattr(trainer, switch, False)
    try:
        return trainer.run_training(spec, progress=arm != "no-progress")
    finally:
        if switch:
            setattr(trainer, switch, saved_switch)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_loop(spec, arm: str | None = None) -> dict:
    from ray_cpu import RayCpuSampler

    from bratslab.tracking.mlflow_runs import client

    sampler = RayCpuSampler().start()
    t0 = time.perf_counter()
    try:
        out = run_arm(spec, arm)
    finally:
        run_wall = time.perf_counter() - t0
        sampler.stop()

    def history(key: str) -> list:  # one Metric per epoch, in epoch order
        return sorted(client().get_metric_history(out.run_id, key), key=lambda m: m.step)

    all_train_s = history("time/train_s")
    train_s = [m.value for m in all_train_s[1:]]  # epochs after the first
    cpu_s = [m.value for m in history("time/train_cpu_s")[1:]]
    wait = [m.value for m in history("time/data_wait_frac")[1:]]
    steps = spec.training.steps_per_epoch
    # Steady state, wall clock: from the first epoch's report to the last one's (MLflow's
    # timestamps are the controller's, taken as it logs each report).
    steady = (all_train_s[0].timestamp / 1000, all_train_s[-1].timestamp / 1000)
    return {
        "step_s": sum(train_s) / (len(train_s) * steps),
        "cpu_s": sum(cpu_s) / (len(cpu_s) * steps),
        "wait_frac": sum(wait) / len(wait),
        "epoch_step_s": [m.value / steps for m in all_train_s],  # every epoch, the first too
        # Constant cost, not per step: the run's wall time outside its epochs' step loops
        # (Ray and worker start-up, dataset split, per-epoch reports, checkpoints, shutdown).
        "outside_steps_s": run_wall - sum(m.value for m in all_train_s),
        "run_wall_s": run_wall,
        "total_steps": steps * len(all_train_s),
        "ray_cpu": sampler.by_kind(),  # CPU s per Ray process kind during the whole run
        "steady_s": steady[1] - steady[0],
        "steady_cpu": sampler.by_kind(steady),  # ... during the steady-state epochs
        "sampler_cpu_s": sampler.own_cpu_s,  # this benchmark's own polling, in the driver
    }


def overhead(
    store: Path,
    common: list[str],
    threads: int,
    steps: int,
    epochs: int = 3,
    arms: list[str] = (),
) -> dict[str, dict]:
    """Plain loop, Ray Train, each of ``arms``, plain loop again (bracketing Ray), all with
    ``threads`` torch threads in a 2-CPU worker: s/step, CPU s/step and data-wait fraction of
    each (the plain loops run as many steps as Ray Train's steady-state epochs)."""
    from bratslab.jobs.spec import load_job

    def spec_for(arm: str | None):
        job = [
            *common,
            f"name=bench-ray-t{threads}" + (f"-{arm}" if arm else ""),
            f"training.epochs={epochs}",
            "model.unet.filters=[16,32,64]",
            f"scaling.torch_threads={threads}",
        ]
        return load_job(ROOT / "jobs" / "smoke.yaml", job)

    spec = spec_for(None)
    plain_steps = (epochs - 1) * steps
    rows = {"plain (before Ray)": plain_loop(spec, store, steps=plain_steps)}
    rows["Ray Train"] = ray_loop(spec)
    for arm in arms:
        rows[f"Ray Train, {arm}"] = ray_loop(spec_for(arm), arm)
    rows["plain (after Ray)"] = plain_loop(spec, store, steps=plain_steps)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="Timed steps per epoch / plain run.")
    ap.add_argument("--patch", type=int, default=48, help="Cubic patch size (voxels).")
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[2, 1], help="Torch threads per overhead run."
    )
    ap.add_argument(
        "--epochs", type=int, default=3, help="Epochs per Ray Train run (steady state: 2nd on)."
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        default=[],
        choices=sorted(ARMS),
        help="Extra Ray Train runs, one change each against Ray Train as is: "
        + "; ".join(f"{k}: {v}" for k, v in ARMS.items()),
    )
    ap.add_argument("--overhead-only", action="store_true", help="Skip sections 3 and 4.")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench" / "train.md")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs: at least 2 (the first epoch is not steady state)")

    home = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ["BRATSLAB_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"

    store = build_store(home, args.patch)
    p = args.patch
    common = [
        f"data.store={store}",
        f"training.patch_size=[{p},{p},{p}]",
        f"training.steps_per_epoch={args.steps}",
        "training.batch_size=2",
        "training.val_every=100",
        "data.max_val_cases=1",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=2",
        "tracking.log_model=false",
        "tracking.experiment=bench-train",
    ]
    runs = {t: overhead(store, common, t, args.steps, args.epochs, args.arms) for t in args.threads}

    cmd = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py"
    if args.steps != 12 or args.patch != 48:
        cmd += f" --steps {args.steps} --patch {args.patch}"
    if args.threads != [2, 1]:
        cmd += " --threads " + " ".join(map(str, args.threads))
    if args.epochs != 3:
        cmd += f" --epochs {args.epochs}"
    if args.arms:
        cmd += " --arms " + " ".join(args.arms)
    if args.overhead_only:
        cmd += " --overhead-only"
    lines = [
        "# Training benchmarks",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({_platform.processor() or _platform.machine()}), "
        f"torch {torch.__version__}, CPU only. Ratios come from one run.",
        "",
        f"## Ray Train overhead (1 worker, U-Net [16,32,64] + deep supervision, {p}³ patches, "
        "batch 2)",
        "",
        "CPU s/step: CPU time of the process running the loop (the Ray worker's own, all "
        "threads), per step.",
        "",
        "| torch threads | loop | s/step (steady state) | CPU s/step | data wait |",
        "|---|---|---|---|---|",
    ]
    for t, rows in runs.items():
        for name, r in rows.items():
            lines.append(
                f"| {t} | {name} | {r['step_s']:.3f} | {r['cpu_s']:.3f} | {r['wait_frac']:.1%} |"
            )
    lines.append("")
    for t, rows in runs.items():
        ref = min(rows["plain (before Ray)"]["step_s"], rows["plain (after Ray)"]["step_s"])
        ray_r = rows["Ray Train"]
        cpu_ref = min(rows["plain (before Ray)"]["cpu_s"], rows["plain (after Ray)"]["cpu_s"])
        lines.append(
            f"- {t} thread(s): Ray Train step time **{ray_r['step_s'] / ref - 1:+.1%}** against "
            f"the faster plain run; worker CPU per step {ray_r['cpu_s'] / cpu_ref - 1:+.1%}."
        )
        lines.append(
            f"- {t} thread(s): constant cost outside the step loops (start-up, per-epoch "
            f"reports and checkpoints, shutdown): {ray_r['outside_steps_s']:.1f} s per run."
        )
    lines += arm_table(runs, args.steps)
    lines += cpu_breakdown(runs)
    lines += [
        "",
        "Target ≤ 5% of step time once started (Ray reports ≤ 2.5% against native DDP); the "
        "constant cost above is separate and not part of that ratio.",
    ]
    if not args.overhead_only:
        lines += arch_sections(store, common, args.steps, p)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def ray_rows(rows: dict[str, dict]) -> dict[str, dict]:
    """The Ray Train runs of one thread count: "Ray Train" and its arms."""
    return {name: r for name, r in rows.items() if name.startswith("Ray Train")}


def others_share(r: dict) -> float:
    """CPU of every Ray process but the training worker during the steady-state epochs, as a
    share of their wall time × cores (what competed with the step)."""
    other = sum(c for k, c in r["steady_cpu"].items() if k != "ray::RayTrainWorker")
    return other / (max(r["steady_s"], 1e-9) * (os.cpu_count() or 1))


def arm_table(runs: dict[int, dict[str, dict]], steps: int) -> list[str]:
    """Each Ray Train run's step time against "Ray Train" (as is) and the faster plain run,
    its per-epoch step times and what Ray's other processes used in its steady state."""
    used = {name.removeprefix("Ray Train, ") for rows in runs.values() for name in rows}
    lines = [
        "",
        "### Ray Train runs: one change each against Ray Train as is",
        "",
        *(f"- `{k}`: {v}" for k, v in ARMS.items() if k in used),
        "",
        "s/step per epoch: every epoch, the first (not steady state) included. Others' CPU: "
        "every Ray process but the worker during the steady-state epochs, share of wall × cores. "
        "Sampler: this benchmark's own polling of Ray's processes (in the driver), CPU s per step.",
        "",
        "| torch threads | run | s/step | vs Ray Train as is | vs faster plain | "
        "s/step per epoch | others' CPU (steady) | sampler CPU s/step | outside steps (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, rows in runs.items():
        ref = min(rows["plain (before Ray)"]["step_s"], rows["plain (after Ray)"]["step_s"])
        base = rows["Ray Train"]["step_s"]
        for name, r in ray_rows(rows).items():
            per_epoch = ", ".join(f"{v:.3f}" for v in r["epoch_step_s"])
            lines.append(
                f"| {t} | {name} | {r['step_s']:.3f} | {r['step_s'] / base - 1:+.1%} | "
                f"{r['step_s'] / ref - 1:+.1%} | {per_epoch} | {others_share(r):.1%} | "
                f"{r['sampler_cpu_s'] / r['total_steps']:.3f} | {r['outside_steps_s']:.1f} |"
            )
    return lines


def cpu_breakdown(runs: dict[int, dict[str, dict]]) -> list[str]:
    """Where the CPU went during each Ray Train run, per kind of Ray process: over the whole
    run, and over its steady-state epochs."""
    lines = [
        "",
        "### CPU used by Ray's processes during each Ray Train run",
        "",
        "Whole run (start-up, epochs, reports, shutdown) and steady state (from the first "
        "epoch's report to the last one's); `ray::RayTrainWorker` is the loop itself, everything "
        "else competes with it for the same cores.",
        "",
        "| torch threads | run | process kind | CPU s | CPU s per step | share of wall × cores "
        "| steady: CPU s | steady: share of wall × cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cores = os.cpu_count() or 1
    for t, rows in runs.items():
        for name, r in ray_rows(rows).items():
            for kind, cpu in r["ray_cpu"].items():
                if cpu < 0.05:
                    continue
                steady = r["steady_cpu"].get(kind, 0.0)
                lines.append(
                    f"| {t} | {name} | {kind} | {cpu:.1f} | {cpu / r['total_steps']:.3f} | "
                    f"{cpu / (r['run_wall_s'] * cores):.1%} | {steady:.1f} | "
                    f"{steady / (max(r['steady_s'], 1e-9) * cores):.1%} |"
                )
    return lines


def arch_sections(store: Path, common: list[str], steps: int, p: int) -> list[str]:
    """Samples/s per architecture, and the smoke model with and without bf16 autocast."""
    from bratslab.jobs.spec import load_job

    common = [*common, "scaling.torch_threads=2"]
    arch_jobs = {
        "unet": ("train_unet.yaml", ["model.unet.filters=[16,32,64,128]"]),
        "segresnet": ("train_segresnet.yaml", ["model.segresnet.init_filters=8"]),
        "mednext": ("train_mednext.yaml", ["model.mednext.size=S", "model.mednext.init_filters=8"]),
    }
    per_arch = {}
    for arch, (job, extra) in arch_jobs.items():
        s = load_job(ROOT / "jobs" / job, [*common, *extra, "scaling.use_gpu=false"])
        r = plain_loop(s, store, steps=max(steps // 2, 3))
        per_arch[arch] = (s.training.batch_size / r["step_s"], r["wait_frac"], s.training.amp)

    # jobs/smoke.yaml as shipped (tiny U-Net, 32³, 1 thread per worker): is bf16 worth it there?
    smoke_amp = {}
    for amp in (False, True):
        s = load_job(
            ROOT / "jobs" / "smoke.yaml",
            [f"data.store={store}", f"training.amp={str(amp).lower()}", "scaling.torch_threads=1"],
        )
        smoke_amp[amp] = plain_loop(s, store, steps=2 * steps)["step_s"]

    lines = [
        "",
        f"## Samples/s per architecture (plain loop, {p}³ patches, batch 2, 2 threads)",
        "",
        "| arch | samples/s | data wait | amp (bf16 on CPU if native) |",
        "|---|---|---|---|",
    ]
    for arch, (sps, wait, amp) in per_arch.items():
        lines.append(f"| {arch} | {sps:.2f} | {wait:.1%} | {amp} |")
    lines += [
        "",
        "Models are each job's section shrunk for a CPU (U-Net filters [16..128], SegResNet 8 "
        "init filters, MedNeXt-S with 8 init filters); the full GPU jobs at 128³ need a GPU. "
        "With amp on, all three train with bf16 autocast on CPU; MedNeXt keeps its depthwise "
        "convolutions and norms in float32 (bratslab.models.runtime).",
        "",
        "## jobs/smoke.yaml model: float32 vs bf16 autocast (plain loop, 1 thread, 32³, batch 2)",
        "",
        "| training.amp | s/step |",
        "|---|---|",
        f"| false (float32) | {smoke_amp[False]:.3f} |",
        f"| true (bf16 on a CPU with native bf16) | {smoke_amp[True]:.3f} |",
    ]
    return lines


if __name__ == "__main__":
    main()
