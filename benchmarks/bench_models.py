"""Model-zoo speed and memory on this machine's CPU.

1. Peak: fp32 (and bf16) GFLOP/s of one big ``torch.mm`` — the ceiling a conv net can approach.
2. fwd+bwd step time per architecture at 64³ and 128³ (batch 1 or ``--batch``, 5 input channels,
   3 outputs):
   ``default`` (fp32, NCDHW, MONAI's own layers — what MONAI's networks do out of the box)
   vs ``bratslab`` (what training uses: ``runtime.prepare_model`` + ``runtime.autocast(arch=)``,
   i.e. channels_last_3d, bf16 autocast, and MedNeXt's faster CPU layers with float32 depthwise
   convolutions and norms, :func:`bratslab.models.mednext.use_fast_cpu_layers`) and, for
   reference, ``bratslab-fp32`` (the same with ``BRATSLAB_CPU_BF16=0``).
   The modes' steps are interleaved (one of each per round). Both wall-clock and process CPU
   seconds are reported: CPU time is less distorted when other processes share the machine.
   Achieved GFLOP/s = 3 x forward FLOPs (backward ~ 2x forward) / step time, as a fraction of
   the fp32 matmul peak.
3. Gradient checkpointing: peak memory of one MedNeXt-S fwd+bwd step (bratslab path) with
   and without, each in a fresh subprocess (peak RSS ``VmHWM`` minus the RSS
   after building the model and input, i.e. the activation/gradient memory of the step).

Run: ``.venv/bin/python benchmarks/bench_models.py``
(options: ``--patches 64 128 --archs mednext unet segresnet --memory-patch 64``)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bratslab.models import runtime
from bratslab.models.config import ModelConfig
from bratslab.models.describe import describe_model
from bratslab.models.mednext import use_monai_layers
from bratslab.models.zoo import build_model


def matmul_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul (2 n³ FLOPs), best of ``reps``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def step_times(
    cfg: ModelConfig, patch: int, modes: list[str], reps: int, warmup: int, batch: int = 1
) -> dict[str, tuple[float, float]]:
    """Median (wall s, process-CPU s) of one fwd+bwd step (loss = mean square of the logits)
    per mode, the modes' steps interleaved (round r times every mode once), so a machine whose
    speed drifts affects every mode alike.

    mode: ``default`` (fp32 NCDHW, MONAI's layers), ``bratslab`` (runtime defaults) or
    ``bratslab-fp32``.
    """
    setups = {}
    for mode in modes:
        torch.manual_seed(0)
        fast = mode != "default"
        model = build_model(cfg).train()
        if not fast:  # MONAI's own layers, not bratslab's faster CPU ones
            use_monai_layers(model)
        x = torch.randn(batch, cfg.in_channels, patch, patch, patch)
        if fast:
            model = runtime.prepare_model(model, "cpu")
            x = runtime.prepare_input(x, "cpu")
        setups[mode] = (model, x, fast)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for i in range(warmup + reps):
        for mode, (model, x, fast) in setups.items():
            if mode == "bratslab-fp32":
                os.environ[runtime.ENV_CPU_BF16] = "0"
            else:
                os.environ.pop(runtime.ENV_CPU_BF16, None)
            model.zero_grad(set_to_none=True)
            t, c = time.perf_counter(), time.process_time()
            with runtime.autocast("cpu", enabled=fast, arch=cfg.arch):
                out = model(x)
            out.float().square().mean().backward()
            del out
            if i >= warmup:
                times[mode].append((time.perf_counter() - t, time.process_time() - c))
    result = {}
    for mode, ts in times.items():
        walls, cpus = sorted(w for w, _ in ts), sorted(c for _, c in ts)
        result[mode] = (walls[len(walls) // 2], cpus[len(cpus) // 2])
    return result


MODES = ["default", "bratslab", "bratslab-fp32"]

CONFIGS = {
    "mednext": ModelConfig(arch="mednext", in_channels=5, mednext={"size": "S", "kernel_size": 3}),
    "unet": ModelConfig(arch="unet", in_channels=5),
    "segresnet": ModelConfig(arch="segresnet", in_channels=5),
}


def memory_child(ckpt: bool, patch: int) -> None:
    """Run in a subprocess: print JSON with the step's peak memory above the resting RSS."""
    cfg = ModelConfig(arch="mednext", in_channels=5, grad_checkpointing=ckpt)
    # The bratslab CPU layout: in NCDHW the depthwise transposed convolution's im2col workspace
    # (~C*k³*X*Y*Z floats) sets the peak whether or not activations are checkpointed.
    model = runtime.prepare_model(build_model(cfg).train(), "cpu")
    x = runtime.prepare_input(torch.randn(1, 5, patch, patch, patch), "cpu")
    rest = _rss_now_mib()
    t = time.perf_counter()
    with runtime.autocast("cpu", arch=cfg.arch):  # the training step's precision
        out = model(x)
    out.float().square().mean().backward()
    dt = time.perf_counter() - t
    # VmHWM: the peak RSS of this process's address space, i.e. the step's peak (building is
    # smaller). Not ru_maxrss: Linux carries the pre-exec RSS of the (v)forked parent into it.
    peak = _status_mib("VmHWM")
    print(json.dumps({"ckpt": ckpt, "rest_mib": rest, "peak_mib": peak, "step_s": dt}))


def _status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_now_mib() -> float:
    return _status_mib("VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--patches", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--memory-patch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="Timed steps at patches <= 64.")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--batch", type=int, default=1, help="Patches per step (jobs train with 2).")
    ap.add_argument(
        "--modes", nargs="+", default=MODES, choices=MODES, help="Step variants (default first)."
    )
    ap.add_argument("--memory-child", choices=["plain", "ckpt"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child == "ckpt", args.memory_patch)
        return

    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads, bf16 native: {runtime.cpu_bf16_supported()}"
    )
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s", flush=True)

    rows = []
    modes = args.modes
    for arch in args.archs:
        cfg = CONFIGS[arch]
        for patch in args.patches:
            fwd_gflops = describe_model(cfg, (patch,) * 3)["gflops"]
            # 128³ steps take up to a minute on 2 cores: one timed step after one warm-up.
            reps = args.reps if patch <= 64 else 1
            fwd_gflops *= args.batch
            row: dict = {"arch": arch, "patch": patch, "batch": args.batch}
            row["fwd_gflops"] = fwd_gflops
            times = step_times(cfg, patch, modes, reps, warmup=1, batch=args.batch)
            for mode, (wall, cpu) in times.items():
                row[mode] = {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "frac_fp32_peak": 3 * fwd_gflops / wall / peak32,
                }
            base = row["default"]
            for mode in modes:
                r = row[mode]
                print(
                    f"{arch:9s} {patch}³ {mode:14s} wall {r['wall_s']:7.2f} s "
                    f"(x{base['wall_s'] / r['wall_s']:.2f})  cpu {r['cpu_s']:7.2f} s "
                    f"(x{base['cpu_s'] / r['cpu_s']:.2f})  "
                    f"{100 * r['frac_fp32_peak']:.1f}% of fp32 peak",
                    flush=True,
                )
            rows.append(row)

    mem = []
    if not args.skip_memory:
        for mode in ("plain", "ckpt"):
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    mode,
                    "--memory-patch",
                    str(args.memory_patch),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            mem.append(json.loads(res.stdout.strip().splitlines()[-1]))
        for m in mem:
            print(
                f"mednext-S {args.memory_patch}³ fwd+bwd ckpt={m['ckpt']!s:5s} "
                f"step peak {m['peak_mib'] - m['rest_mib']:.0f} MiB above rest "
                f"(peak RSS {m['peak_mib']:.0f} MiB), {m['step_s']:.1f} s",
                flush=True,
            )
    print(
        json.dumps(
            {
                "threads": threads,
                "peak_fp32": peak32,
                "peak_bf16": peak16,
                "steps": rows,
                "memory": mem,
            }
        )
    )


if __name__ == "__main__":
    main()
