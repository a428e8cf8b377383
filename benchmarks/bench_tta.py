"""8-flip TTA: the paths ``bratslab predict`` can run, timed against each other, and which one
``--tta-path auto`` picks, on a quick case and on a realistic one.

Trains a small U-Net for a short while on one synthetic case (so its masks are not noise), then
predicts a second case with Gaussian-blended sliding windows (overlap 0.5) and 8-flip TTA, in
arms that differ in one setting at a time:

* path (``bratslab.inference.tta_path``) ``naive``: 8 sliding windows, one per view (the
  baseline: 8 tilings and blendings, one model call per window view); ``perview``: one sliding
  window whose predictor runs a window's 8 views one call each; ``batched``: the same with the 8
  views in one call. ``--algos reference`` adds the textbook baseline, 8 sliding windows over
  the flipped volumes (the same work as ``naive``; results differ where the tiling is not its
  own mirror image);
* precision ``fp32`` or ``amp`` (inference autocast: bf16 on CPU, fp16 on CUDA);
* layout ``cl`` (what ``models.runtime`` picks: channels-last 3-D on CPU, NCDHW on CUDA) or,
  with ``--layouts both`` on CPU, ``ncdhw`` too (``BRATSLAB_CHANNELS_LAST=0``).

Cases (``--case``): ``quick``: a 64³ volume and 64³ windows (1 window per pass), U-Net filters
16-128, both precisions; ``real``: the geometry of a real BraTS crop, a 140×172×138 volume and
128³ windows (8 windows per pass), at the precision ``predict`` ships (amp; ``--real-precisions
fp32 amp`` for both) and, because a 16-128 U-Net takes ~10 s of CPU per 128³ window view in
fp32 on a 2-core CPU, U-Net filters 2-16 (``--real-filters``): the geometry is real, the
network the smallest with it.

Every round runs every arm once, in an order rotated by one arm per round, so a change of
machine load hits all arms alike; a ratio is the median over rounds of the per-round ratio of
two arms that differ in exactly one setting, which the output names. Dice agreement between
the two arms: mean over WT/TC/ET of the Dice of their masks (p >= 0.5). The 1/5/15-minute load
average is printed with every round and beside the results: a figure taken at load > 1 on a
2-core machine is not a quiet-machine figure. Then ``auto``'s choice is measured afresh (an
empty cache) and printed, with the speed-up of the chosen arm over ``naive``.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tta.py --case quick`` (or ``real``,
or ``both``, the default); ``--profile ARM`` prints a torch.profiler table of one arm instead.
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
from bratslab.data.discovery import discover_cases
from bratslab.data.labels import labels_to_regions
from bratslab.data.preprocess import preprocess_case
from bratslab.data.synth import synthesize_dataset
from bratslab.evaluate.metrics import region_dice
from bratslab.inference import tta_path
from bratslab.inference.sliding_window import (
    choose_tta_path,
    predict_probabilities,
    predict_probabilities_naive,
)
from bratslab.models.config import ModelConfig
from bratslab.models.runtime import ENV_CHANNELS_LAST
from bratslab.models.zoo import build_model

ALGOS = ("naive", "perview", "batched", "reference")
PRECISIONS = ("fp32", "amp")


@dataclass(frozen=True)
class Case:
    """One benchmark geometry: the synthetic raw shape, the volume predicted (fitted to
    ``volume`` by centred crop/pad when given), the window, the network and defaults."""

    name: str
    raw_shape: tuple[int, int, int]
    volume: tuple[int, int, int] | None
    patch: tuple[int, int, int]
    filters: tuple[int, ...]
    precisions: tuple[str, ...]
    rounds: int
    steps: int


CASES = {
    "quick": Case("quick", (96, 96, 72), None, (64,) * 3, (16, 32, 64, 128), PRECISIONS, 5, 40),
    "real": Case(
        "real", (150, 180, 146), (140, 172, 138), (128,) * 3, (2, 4, 8, 16), ("amp",), 5, 40
    ),
}


@dataclass(frozen=True)
class Arm:
    algo: str
    precision: str
    layout: str

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.precision}-{self.layout}"


def _fit(a: np.ndarray, shape, fill: float = 0.0) -> np.ndarray:
    """``a`` (..., X, Y, Z) centre-cropped / padded with ``fill`` to ``shape``."""
    out = np.full((*a.shape[:-3], *shape), fill, dtype=a.dtype)
    src, dst = [], []
    for have, want in zip(a.shape[-3:], shape, strict=True):
        n = min(have, want)
        s0, d0 = (have - n) // 2, (want - n) // 2
        src.append(slice(s0, s0 + n))
        dst.append(slice(d0, d0 + n))
    out[(..., *dst)] = a[(..., *src)]
    return out


def _cases(case: Case, tmp: Path):
    synthesize_dataset(tmp / "raw", 2, "brats2023", seed=7, shape=case.raw_shape)
    cfg = PreprocessConfig(min_size=min(case.patch), dtype="float32")
    out = [preprocess_case(c, cfg) for c in discover_cases(tmp / "raw")]
    if case.volume is None:
        return [(c.x, c.y) for c in out]
    return [(_fit(c.x, case.volume), _fit(c.y, case.volume)) for c in out]


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
        if arm.algo == "reference":
            return predict_probabilities_naive(model, x, tta="flips", amp=amp, **common)
        return predict_probabilities(model, x, tta="flips", amp=amp, tta_path=arm.algo, **common)[0]

    return run


def _comparisons(arms: list[Arm], picked: dict[str, str]) -> list[tuple[str, Arm, Arm]]:
    """(what changes, arm A, arm B) pairs that differ in exactly one setting."""
    have = set(arms)
    out = []
    for a in arms:
        chosen = picked.get(a.precision, "batched")
        for setting, values, label in (
            ("algo", ("naive", chosen), f"path: naive -> auto's pick ({chosen})"),
            ("algo", ("reference", "naive"), "path: flipped-volume tilings -> naive"),
            ("algo", ("naive", "perview"), "path: 8 tilings -> 1 tiling, one call per view"),
            ("algo", ("perview", "batched"), "views: one call each -> 8 views in one call"),
            ("precision", PRECISIONS, "precision: fp32 -> autocast"),
            ("layout", ("ncdhw", "cl"), "layout: NCDHW -> channels-last"),
        ):
            if getattr(a, setting) != values[0] or values[0] == values[1]:
                continue
            b = Arm(**{**a.__dict__, setting: values[1]})
            if b in have and (label, a, b) not in out:
                out.append((label, a, b))
    return out


def _agreement(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(list(region_dice(p >= 0.5, q >= 0.5).values())))


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def _time_rounds(runners: dict[Arm, Callable], rounds: int, warm_up: bool = True):
    """Interleaved timing: per round every arm once, the order rotated each round. Returns wall
    and CPU seconds per arm per round, each arm's output (from the untimed warm-up round, or
    round 1 without it) and the load averages seen at the end of each round."""
    arms = list(runners)
    outputs = {}
    if warm_up:  # oneDNN primitives for every shape
        outputs = {a: runners[a]() for a in arms}
    wall: dict[Arm, list[float]] = {a: [] for a in arms}
    cpu: dict[Arm, list[float]] = {a: [] for a in arms}
    loads = []
    for r in range(rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for a in order:
            t0, c0 = time.perf_counter(), time.process_time()
            out = runners[a]()
            outputs.setdefault(a, out)
            wall[a].append(time.perf_counter() - t0)
            cpu[a].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
        print(
            f"round {r + 1}/{rounds} (load {_load()}): "
            + ", ".join(f"{a.name} {wall[a][-1]:.2f}s/{cpu[a][-1]:.2f}cpu" for a in arms),
            flush=True,
        )
    return wall, cpu, outputs, loads


def _auto_picks(model, in_channels, patch, precisions, device) -> dict[str, dict]:
    """What ``--tta-path auto`` picks for each precision, measured now with an empty cache:
    ``{precision: {"path", "seconds", "cpu_s", "wall_s", ...}}``."""

    def entries() -> dict:
        f = tta_path.cache_file()
        return json.loads(f.read_text())["entries"] if f.exists() else {}

    picks = {}
    saved = os.environ.get("BRATSLAB_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["BRATSLAB_HOME"] = home
        tta_path.clear_memo()
        for precision in precisions:
            before, t0 = entries(), time.perf_counter()
            amp = precision == "amp"
            path = choose_tta_path(model, patch, "flips", in_channels, 1, device, amp=amp)
            seconds = time.perf_counter() - t0
            entry = next((v for k, v in entries().items() if k not in before), {})
            picks[precision] = {**entry, "path": path.name, "seconds": seconds}
            print(f"auto ({precision}): {path.name}, measured in {seconds:.1f} s: {entry}")
    if saved is None:
        os.environ.pop("BRATSLAB_HOME", None)
    else:
        os.environ["BRATSLAB_HOME"] = saved
    tta_path.clear_memo()
    return picks


def _profile(run: Callable, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("quick", "real", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="The same as --case quick.")
    parser.add_argument("--rounds", type=int, help="Timed rounds (default 5).")
    parser.add_argument("--steps", type=int, help="Training steps (default 40).")
    parser.add_argument(
        "--algos", nargs="+", default=["naive", "perview", "batched"], choices=ALGOS
    )
    parser.add_argument("--real-precisions", nargs="+", choices=PRECISIONS, default=["amp"])
    parser.add_argument("--real-filters", type=int, nargs="+", help="U-Net filters, real case.")
    parser.add_argument(
        "--pick-only",
        action="store_true",
        help="Time only naive and auto's pick (fewer arms, for slow cases).",
    )
    parser.add_argument(
        "--no-warmup-round",
        action="store_true",
        help="Skip the untimed round: auto's measurement just ran every path at the same "
        "window shapes, which warms oneDNN up (outputs for Dice then come from round 1).",
    )
    parser.add_argument("--layouts", choices=("default", "both"), default="default")
    parser.add_argument("--profile", metavar="ARM", help="Profile one arm, e.g. naive-fp32-cl.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    names = ["quick"] if args.quick else (["quick", "real"] if args.case == "both" else [args.case])
    results = {}
    for name in names:
        case = CASES[name]
        if name == "real":
            filters = tuple(args.real_filters or case.filters)
            case = Case(**{**case.__dict__, "precisions": tuple(args.real_precisions),
                           "filters": filters})  # fmt: skip
        results[name] = _run_case(case, args, torch.device(args.device))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _run_case(case: Case, args, device: torch.device) -> dict | None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        (x_train, y_train), (x, y) = _cases(case, Path(tmp))
    steps = args.steps or case.steps
    cfg = ModelConfig(arch="unet", unet={"filters": list(case.filters)})
    t0 = time.perf_counter()
    # 48³ training crops: cheaper steps; the network is fully convolutional.
    model, loss = _train(build_model(cfg), x_train, y_train, (48,) * 3, steps, device)
    print(
        f"\n== case {case.name}: trained U-Net {list(case.filters)} {steps} steps in "
        f"{time.perf_counter() - t0:.0f} s (loss {loss:.3f})",
        flush=True,
    )
    layouts = ["cl", "ncdhw"] if args.layouts == "both" and device.type == "cpu" else ["cl"]
    models = {lay: copy.deepcopy(model) for lay in layouts}
    models.get("ncdhw", nn.Identity()).to(memory_format=torch.contiguous_format)
    common = {"roi_size": case.patch, "overlap": 0.5, "device": device}
    if args.profile:
        arm = Arm(*args.profile.split("-"))  # e.g. naive-fp32-cl
        _profile(_runner(arm, models, x, common))
        return None
    load_start = _load()
    picks = _auto_picks(copy.deepcopy(model), x.shape[0], case.patch, case.precisions, device)
    arms = []
    for lay in layouts:
        for p in case.precisions:
            algos = ["naive", picks[p]["path"]] if args.pick_only else args.algos
            arms += [Arm(a, p, lay) for a in dict.fromkeys(algos)]
    runners = {a: _runner(a, models, x, common) for a in arms}
    rounds = args.rounds or case.rounds
    wall, cpu, outputs, loads = _time_rounds(runners, rounds, not args.no_warmup_round)
    chosen = {p: v["path"] for p, v in picks.items()}
    timing = (wall, cpu, outputs, loads)
    return _report(case, device, x.shape[1:], chosen, timing, y, load_start, picks)


def _report(case, device, vol_shape, chosen, timing, gt, load_start, picks):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    wall, cpu, outputs, loads = timing
    patch = case.patch
    scan = _get_scan_interval(vol_shape, patch, 3, (0.5,) * 3)
    n_windows = len(dense_patch_slices(vol_shape, patch, scan))
    truth = labels_to_regions(gt)
    rounds = len(next(iter(wall.values())))
    print(
        f"\ncase {case.name}: device {device}, threads {torch.get_num_threads()}, volume "
        f"{tuple(vol_shape)}, patch {patch}, U-Net {list(case.filters)}, {n_windows} windows per "
        f"pass, 8 flips, {rounds} rounds; load average (1/5/15 min) at the start {load_start}, "
        f"at the end {_load()}, 1-min load per round {[round(v, 2) for v in loads]}; "
        f"auto picks {chosen}\n"
    )
    print("| arm | median wall s | median CPU s | Dice vs GT |")
    print("|---|---|---|---|")
    for a in wall:
        vs_gt = float(np.mean(list(region_dice(outputs[a] >= 0.5, truth).values())))
        w, c = statistics.median(wall[a]), statistics.median(cpu[a])
        tag = " (auto's pick)" if chosen.get(a.precision) == a.algo else ""
        print(f"| {a.name}{tag} | {w:.2f} | {c:.2f} | {vs_gt:.3f} |")
    print(
        "\n| what changes (A -> B) | A | B | wall speed-up B vs A (median of per-round ratios) "
        "| per-round range | CPU-time speed-up (range) | Dice agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    results = []
    for label, a, b in _comparisons(list(wall), chosen):
        ratios = [ta / tb for ta, tb in zip(wall[a], wall[b], strict=True)]
        cpu_ratios = [ta / tb for ta, tb in zip(cpu[a], cpu[b], strict=True)]
        med, agree = statistics.median(ratios), _agreement(outputs[a], outputs[b])
        cpu_med = statistics.median(cpu_ratios)
        print(
            f"| {label} | {a.name} | {b.name} | {med:.2f}x | {min(ratios):.2f}-"
            f"{max(ratios):.2f} | {cpu_med:.2f}x ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) "
            f"| {agree:.4f} |"
        )
        results.append(
            {"change": label, "a": a.name, "b": b.name, "speedup": med, "ratios": ratios,
             "cpu_speedup": cpu_med, "cpu_ratios": cpu_ratios, "agreement": agree}
        )  # fmt: skip
    arms = {a.name: {"wall": wall[a], "cpu": cpu[a]} for a in wall}
    return {
        "volume": list(vol_shape), "patch": list(patch), "windows": n_windows,
        "filters": list(case.filters), "load_start": load_start, "load_end": _load(),
        "loads": loads, "auto": picks, "arms": arms, "comparisons": results,
    }  # fmt: skip


if __name__ == "__main__":
    main()
