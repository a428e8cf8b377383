"""8-flip TTA: the shipped sliding-window predictor vs 8 separate passes, one change at a time.

Trains a small U-Net for a short while on one synthetic case (so its masks are not noise), then
predicts a second case with Gaussian-blended sliding windows (overlap 0.5) and 8-flip TTA, in
arms that differ in one setting at a time:

* algorithm ``naive``: 8 × ``sliding_window_inference``, one per flipped volume (the baseline);
  ``perview``: one sliding window whose predictor runs the 8 views of a window, one model call
  each; ``batched``: the same with the 8 views in one call. ``bratslab predict`` runs
  ``perview`` or ``batched`` as ``batch_views_default(device)`` says (printed);
* precision ``fp32`` or ``amp`` (inference autocast: bf16 on CPU, fp16 on CUDA);
* layout ``cl`` (what ``models.runtime`` picks: channels-last 3-D on CPU, NCDHW on CUDA) or,
  with ``--layouts both`` on CPU, ``ncdhw`` too (``BRATSLAB_CHANNELS_LAST=0``).

Every round runs every arm once, in an order rotated by one arm per round, so a change of
machine load hits all arms alike; a ratio is the median over rounds of the per-round ratio of
two arms that differ in exactly one setting, which the output names. Dice agreement between
the two arms: mean over WT/TC/ET of the Dice of their masks (p >= 0.5).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tta.py --quick`` (1 window per pass)
or without ``--quick`` (8 windows per pass); ``--profile ARM`` prints a torch.profiler table of
one arm instead of timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bratslab.data.config import PreprocessConfig
from bratslab.data.labels import labels_to_regions
from bratslab.data.layout import discover_cases
from bratslab.data.preprocess import preprocess_case
from bratslab.data.synth import synthesize_dataset
from bratslab.evaluate.inference import (
    batch_views_default,
    predict_probabilities,
    predict_probabilities_naive,
)
from bratslab.evaluate.metrics import region_dice
from bratslab.models.config import ModelConfig
from bratslab.models.runtime import ENV_CHANNELS_LAST
from bratslab.models.zoo import build_model

ALGOS = ("naive", "perview", "batched")
PRECISIONS = ("fp32", "amp")


@dataclass(frozen=True)
class Arm:
    algo: str
    precision: str
    layout: str

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.precision}-{self.layout}"


def _cases(shape, tmp: Path):
    synthesize_dataset(tmp / "raw", 2, "brats2023", seed=7, shape=shape)
    cfg = PreprocessConfig(min_size=64, dtype="float32")
    return [preprocess_case(c, cfg) for c in discover_cases(tmp / "raw")]


def _train(model, x, y, patch, steps, device):
    """A few dozen Adam steps on random crops: enough for plausible WT/TC/ET masks."""
    regions = torch.from_numpy(labels_to_regions(y).astype(np.float32))
    xs = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train().to(device)
    for _ in range(steps):
        lo = [int(rng.integers(0, s - p + 1)) for s, p in zip(x.shape[1:], patch, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch, strict=True))
        xb = xs[(slice(None), *sl)][None].to(device)
        yb = regions[(slice(None), *sl)][None].to(device)
        logits = model(xb)
        logits = logits[0] if isinstance(logits, list) else logits
        prob = torch.sigmoid(logits)
        inter = (prob * yb).sum((2, 3, 4))
        dice = (2 * inter + 1) / (prob.sum((2, 3, 4)) + yb.sum((2, 3, 4)) + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb) + (1 - dice).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


def _runner(arm: Arm, models: dict[str, nn.Module], x, common) -> Callable[[], np.ndarray]:
    """A call of one arm; each layout has its own copy of the model (a converted copy would
    keep channels-last weights, which make convolutions pick channels-last themselves)."""
    model = models[arm.layout]
    amp = arm.precision == "amp"

    def run() -> np.ndarray:
        os.environ[ENV_CHANNELS_LAST] = "0" if arm.layout == "ncdhw" else "1"
        if arm.algo == "naive":
            return predict_probabilities_naive(model, x, tta="flips", amp=amp, **common)
        batched = arm.algo == "batched"
        return predict_probabilities(
            model, x, tta="flips", amp=amp, batch_transforms=batched, **common
        )[0]

    return run


def _comparisons(arms: list[Arm], shipped: str) -> list[tuple[str, Arm, Arm]]:
    """(what changes, arm A, arm B) pairs that differ in exactly one setting."""
    have = set(arms)
    out = []
    for a in arms:
        for setting, values, label in (
            ("algo", ("naive", shipped), f"algorithm: 8 tilings -> predict's path ({shipped})"),
            ("algo", ("perview", "batched"), "views: one call each -> 8 views in one call"),
            ("precision", PRECISIONS, "precision: fp32 -> autocast"),
            ("layout", ("ncdhw", "cl"), "layout: NCDHW -> channels-last"),
        ):
            if getattr(a, setting) != values[0] or values[0] == values[1]:
                continue
            b = Arm(**{**a.__dict__, setting: values[1]})
            if b in have:
                out.append((label, a, b))
    return out


def _agreement(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(list(region_dice(p >= 0.5, q >= 0.5).values())))


def _time_rounds(runners: dict[Arm, Callable], rounds: int):
    """Interleaved timing: per round every arm once, the order rotated each round. Returns wall
    and CPU seconds per arm per round and each arm's output (from the untimed warm-up round)."""
    arms = list(runners)
    outputs = {a: runners[a]() for a in arms}  # warm-up: oneDNN primitives for every shape
    wall: dict[Arm, list[float]] = {a: [] for a in arms}
    cpu: dict[Arm, list[float]] = {a: [] for a in arms}
    for r in range(rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for a in order:
            t0, c0 = time.perf_counter(), time.process_time()
            runners[a]()
            wall[a].append(time.perf_counter() - t0)
            cpu[a].append(time.process_time() - c0)
        print(
            f"round {r + 1}/{rounds}: " + ", ".join(f"{a.name} {wall[a][-1]:.2f}s" for a in arms),
            flush=True,
        )
    return wall, cpu, outputs


def _profile(run: Callable, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64³ volume: 1 window per pass.")
    parser.add_argument("--rounds", type=int, help="Timed rounds (default 5 quick, 3 full).")
    parser.add_argument("--steps", type=int, help="Training steps (default 40 quick, 120 full).")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--layouts", choices=("default", "both"), default="default")
    parser.add_argument("--profile", metavar="ARM", help="Profile one arm, e.g. naive-fp32-cl.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    device = torch.device(args.device)
    shape = (96, 96, 72) if args.quick else (128, 128, 96)
    patch = (64, 64, 64)
    steps = args.steps or (40 if args.quick else 120)
    rounds = args.rounds or (5 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        train_case, test_case = _cases(shape, Path(tmp))
    cfg = ModelConfig(arch="unet", unet={"filters": [16, 32, 64, 128]})
    t0 = time.perf_counter()
    # 48³ training crops: cheaper steps; the network is fully convolutional.
    model, loss = _train(build_model(cfg), train_case.x, train_case.y, (48,) * 3, steps, device)
    print(
        f"trained {steps} steps in {time.perf_counter() - t0:.0f} s (loss {loss:.3f})", flush=True
    )
    layouts = ["cl", "ncdhw"] if args.layouts == "both" and device.type == "cpu" else ["cl"]
    models = {lay: copy.deepcopy(model) for lay in layouts}
    models.get("ncdhw", nn.Identity()).to(memory_format=torch.contiguous_format)
    x, common = test_case.x, {"roi_size": patch, "overlap": 0.5, "device": device}
    arms = [Arm(a, p, lay) for lay in layouts for p in PRECISIONS for a in args.algos]
    runners = {a: _runner(a, models, x, common) for a in arms}
    if args.profile:
        _profile(next(r for a, r in runners.items() if a.name == args.profile))
        return
    wall, cpu, outputs = _time_rounds(runners, rounds)
    shipped = "batched" if batch_views_default(device) else "perview"
    _report(args, device, x.shape[1:], patch, shipped, wall, cpu, outputs, test_case.y)


def _report(args, device, vol_shape, patch, shipped, wall, cpu, outputs, gt) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    scan = _get_scan_interval(vol_shape, patch, 3, (0.5,) * 3)
    n_windows = len(dense_patch_slices(vol_shape, patch, scan))
    truth = labels_to_regions(gt)
    print(
        f"\ndevice {device}, threads {torch.get_num_threads()}, volume {tuple(vol_shape)}, "
        f"patch {patch}, {n_windows} windows per pass, 8 flips, {len(next(iter(wall.values())))} "
        f"rounds; predict's path on this device: {shipped}\n"
    )
    print("| arm | median wall s | median CPU s | Dice vs GT |")
    print("|---|---|---|---|")
    for a in wall:
        vs_gt = float(np.mean(list(region_dice(outputs[a] >= 0.5, truth).values())))
        w, c = statistics.median(wall[a]), statistics.median(cpu[a])
        print(f"| {a.name} | {w:.2f} | {c:.2f} | {vs_gt:.3f} |")
    print(
        "\n| what changes (A -> B) | A | B | wall speed-up B vs A (median of per-round ratios) "
        "| per-round range | CPU-time speed-up | Dice agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    results = []
    for label, a, b in _comparisons(list(wall), shipped):
        ratios = [ta / tb for ta, tb in zip(wall[a], wall[b], strict=True)]
        cpu_ratios = [ta / tb for ta, tb in zip(cpu[a], cpu[b], strict=True)]
        med, agree = statistics.median(ratios), _agreement(outputs[a], outputs[b])
        cpu_med = statistics.median(cpu_ratios)
        print(
            f"| {label} | {a.name} | {b.name} | {med:.2f}x | {min(ratios):.2f}-"
            f"{max(ratios):.2f} | {cpu_med:.2f}x | {agree:.4f} |"
        )
        results.append(
            {
                "change": label,
                "a": a.name,
                "b": b.name,
                "speedup": med,
                "ratios": ratios,
                "cpu_speedup": cpu_med,
                "agreement": agree,
            }
        )
    if args.json:
        arms = {a.name: {"wall": wall[a], "cpu": cpu[a]} for a in wall}
        args.json.write_text(json.dumps({"arms": arms, "comparisons": results}, indent=2))


if __name__ == "__main__":
    main()
