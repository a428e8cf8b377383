"""What each of MedNeXt's faster CPU layers buys (issue 3), measured within one process.

1. One MONAI ``MedNeXtUpBlock`` (64 -> 32 channels, 32³ -> 64³, channels-last, fwd+bwd):
   PyTorch's layers vs the forward-conv transposed convolutions vs those plus per-channel
   GroupNorm's batch-norm backward (:mod:`bratslab.models.transposed`, ``.norm``).
2. A MedNeXt-S training step (batch 1, 5 -> 3 channels, fwd+bwd, channels-last):
   ``monai+depthwise`` (MONAI's layers except the depthwise convolutions' faster backward,
   :mod:`bratslab.models.depthwise`; float32),
   ``fast-fp32`` (all of :func:`bratslab.models.mednext.use_fast_cpu_layers`, float32) and
   ``fast-bf16`` (the same under bf16 autocast, depthwise layers and norms float32: what
   training runs).
3. Inference (forward only, bf16 autocast as ``predict`` runs it): MONAI's layers vs the fast ones.

Variants are interleaved round by round and the speed-ups are medians of per-round ratios: this
machine's speed drifts by 20-35 % within minutes.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mednext_layers.py [--patch 64 --reps 6]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from monai.networks.blocks.mednext_block import MedNeXtUpBlock

from bratslab.models import runtime
from bratslab.models.config import ModelConfig
from bratslab.models.depthwise import use_fast_depthwise
from bratslab.models.mednext import use_monai_layers
from bratslab.models.norm import use_instance_group_norm
from bratslab.models.transposed import use_fast_transposed
from bratslab.models.zoo import build_model

CL = torch.channels_last_3d


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, float]]:
    """{name: (median s, median per-round speed-up vs the first entry)}, after one warm-up."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t)
    base = times[next(iter(fns))]
    return {
        k: (statistics.median(ts), statistics.median(b / t for b, t in zip(base, ts, strict=True)))
        for k, ts in times.items()
    }


def report(title: str, res: dict[str, tuple[float, float]]) -> None:
    print(f"\n{title}\n| variant | median s | speed-up (paired) |\n|---|---|---|")
    for name, (t, ratio) in res.items():
        print(f"| {name} | {t:.3f} | ×{ratio:.2f} |")


def up_block(reps: int) -> None:
    torch.manual_seed(0)
    plain = MedNeXtUpBlock(64, 32, expansion_ratio=2, kernel_size=3, use_residual_connection=True)
    plain = plain.to(memory_format=CL)
    fast_t = copy.deepcopy(plain)
    use_fast_transposed(fast_t)
    fast_tn = copy.deepcopy(fast_t)
    use_instance_group_norm(fast_tn)
    x = torch.randn(1, 64, 32, 32, 32).contiguous(memory_format=CL).requires_grad_()
    g = torch.randn(1, 32, 64, 64, 64).contiguous(memory_format=CL)

    def step(m):
        return lambda: torch.autograd.grad(m(x), [x, *m.parameters()], g)

    res = interleaved(
        {
            "PyTorch layers": step(plain),
            "+ transposed as forward convs": step(fast_t),
            "+ GroupNorm with batch-norm backward": step(fast_tn),
        },
        reps,
    )
    report("MedNeXtUpBlock 64 -> 32 ch, 32³ -> 64³, fwd+bwd", res)


def model_step(patch: int, reps: int) -> None:
    cfg = ModelConfig(arch="mednext", in_channels=5, mednext={"size": "S", "kernel_size": 3})
    torch.manual_seed(0)
    fast = runtime.prepare_model(build_model(cfg).train(), "cpu")
    dw_only = copy.deepcopy(fast)
    use_monai_layers(dw_only)
    use_fast_depthwise(dw_only)  # without autocast: only the depthwise backward is bratslab's
    x = runtime.prepare_input(torch.randn(1, 5, patch, patch, patch), "cpu")

    def step(m, bf16: bool):
        def run():
            m.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(x)
            out.float().square().mean().backward()

        return run

    res = interleaved(
        {
            "monai+depthwise (fp32)": step(dw_only, False),
            "fast-fp32": step(fast, False),
            "fast-bf16 (training default)": step(fast, True),
        },
        reps,
    )
    report(f"MedNeXt-S {patch}³ training step, batch 1", res)

    plain = copy.deepcopy(fast).eval()
    use_monai_layers(plain)
    fast.eval()

    def infer(m):
        def run():
            with torch.no_grad(), runtime.autocast("cpu", arch="mednext", inference=True):
                return m(x).float()

        return run

    a, b = infer(plain)(), infer(fast)()
    res = interleaved({"MONAI layers": infer(plain), "fast layers": infer(fast)}, reps)
    report(f"MedNeXt-S {patch}³ inference forward (bf16)", res)
    print(f"\nrelative L2 difference of the logits: {((a - b).norm() / a.norm()).item():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    up_block(args.reps)
    model_step(args.patch, args.reps)


if __name__ == "__main__":
    main()
