"""Augmentation placement (``data.augment.on``): loader CPU seconds per sample, arms interleaved.

Arms, on the same synthetic cases (4 modalities + foreground mask, labels 1-3), one thread each,
CPU time (``time.process_time``) per sample:

(s) today's loader with augmentation off (sampling and stacking only), the floor.
(a) ``on: loader`` — today's loader: sample a patch, then the MONAI per-sample recipe.
(b) ``on: device`` — the loader only samples, each patch with its draw's affine margin into reused
    batch arrays (steady state)
    (:func:`bratslab.data.augment_draw.affine_margin`); and (b+) the batched torch augmentation
    (:class:`bratslab.data.augment_batched.BatchAugment`, batch ``--batch``) on the CPU, the
    worker's cost when the training device is the CPU.
(c) nnU-Net v2's default training transforms (``nnUNetTrainer.get_training_transforms``: its
    rotation ±30°, scaling 0.7-1.4, BraTS regions, deep-supervision targets) on the same cases,
    from its larger initial crop (``get_patch_size``), run in a subprocess of a separate venv
    (``--nnunet-python``, default /tmp/nnunet-venv/bin/python, never a project dependency);
    reported as skipped where that venv is missing.

Each at ``--sizes`` (64³ and 128³) and for two recipes: ``default`` (``AugmentConfig()``,
nnU-Net's recipe) and ``scanner`` (``jobs/train_cpu.yaml``'s scanner-shift recipe). Every
round runs every arm for ``--samples`` samples, the order rotated each round, so a change of
machine load hits all arms alike; the table gives the median over rounds. The load average
is printed beside the results.

"Loader CPUs one GPU needs" = loader CPU s/sample x batch / step s, for a GPU training step of
``--step-s`` seconds per batch (default 0.35 s for batch 2 at 128³: the figure the issue
assumes for one GPU, not measured here); at 64³ the step is taken as 1/8 of it.

Where a GPU is present (or with ``--device-arm-on cpu``) it also times, in wall ms per batch,
the batched augmentation against one training step on that device.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_augment.py --rounds 2 --samples 6``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bratslab.data.augment import build_augment
from bratslab.data.augment_batched import BatchAugment
from bratslab.data.config import AugmentConfig
from bratslab.data.device_sampling import fill_batch, margin_sampler, sampler_ring
from bratslab.data.loader import PatchSampler, augment_patch
from bratslab.jobs.spec import load_job

ROOT = Path(__file__).resolve().parents[1]
NNUNET_PY = "/tmp/nnunet-venv/bin/python"

NNUNET_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
args = json.loads(sys.argv[1])
p = args["patch"]
rot = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
initial = [int(v) for v in get_patch_size([p] * 3, rot, rot, rot, (0.85, 1.25))]
ds = [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3]
tr = nnUNetTrainer.get_training_transforms(
    [p] * 3, rot, ds, (0, 1, 2), False, use_mask_for_norm=None, is_cascaded=False,
    foreground_labels=[1, 2, 3], regions=[(1, 2, 3), (1, 3), (3,)], ignore_label=None)
def crop(path, centre, size):
    v = np.load(path, mmap_mode="r")
    lo = [c - s // 2 for c, s in zip(centre, size)]
    out = np.zeros((v.shape[0], *size), np.float32)
    src = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(lo, size, v.shape[1:]))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[(slice(None), *dst)] = v[(slice(None), *src)]
    return out
times = []
for i, (xp, yp, centre) in enumerate(args["draws"]):
    x = torch.from_numpy(crop(xp, centre, initial)[:4])
    y = torch.from_numpy(crop(yp, centre, initial).astype(np.int16))
    c0 = time.process_time()
    tr(**{"image": x, "segmentation": y})
    times.append(time.process_time() - c0)
print(json.dumps({"initial": initial, "cpu_s": times}))
"""


def _cases(tmp: Path, patch: int, n: int = 2) -> list[dict]:
    """``n`` synthetic store cases ``(5, P+24, P+24, P+8)``: smooth modalities in an
    ellipsoidal brain (mask channel last), a lesion of labels 1-3 off centre."""
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    shape = (patch + 24, patch + 24, patch + 8)
    g = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    )
    brain = (g**2).sum(0) < 0.8
    for k in range(n):
        rng = np.random.default_rng(k)
        img = [
            np.sin(3 * g[0] + c) + g[1] * g[2] + 0.2 * rng.standard_normal(shape) for c in range(4)
        ]
        x = np.stack([*(m * brain for m in img), brain]).astype(np.float32)
        d = ((g - np.array([0.2, -0.1, 0.1])[:, None, None, None]) ** 2).sum(0)
        y = np.select([d < 0.01, d < 0.03, d < 0.08], [1, 3, 2], 0).astype(np.uint8)[None]
        np.save(tmp / f"c{k}_x.npy", x)
        np.save(tmp / f"c{k}_y.npy", y)
        rows.append(
            {
                "case_id": f"c{k}",
                "x_path": str(tmp / f"c{k}_x.npy"),
                "y_path": str(tmp / f"c{k}_y.npy"),
            }
        )
    return rows


def recipes() -> dict[str, AugmentConfig]:
    job = load_job(ROOT / "jobs" / "train_cpu.yaml", [f"data.store={ROOT}"])
    return {"default": AugmentConfig(), "scanner": job.data.augment}


def _cpu(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def arm_loader(rows, patch, cfg, n, seed, batch) -> float:
    """(a) CPU s/sample of today's loader: sample, MONAI per-sample augmentation, stack."""
    sampler = PatchSampler([patch] * 3, 5, 1 / 3, seed)
    compose = build_augment(cfg, seed)

    def run():
        for i in range(0, n, batch):
            pairs = [
                augment_patch(compose, *sampler.sample(rows[(i + j) % len(rows)]), has_mask=True)
                for j in range(batch)
            ]
            np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return _cpu(run) / n


def arm_plain(rows, patch, n, seed, batch) -> float:
    """(s) CPU s/sample of today's loader with augmentation off: sample and stack."""
    sampler = PatchSampler([patch] * 3, 5, 1 / 3, seed)

    def run():
        for i in range(0, n, batch):
            pairs = [sampler.sample(rows[(i + j) % len(rows)]) for j in range(batch)]
            np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return _cpu(run) / n


_SAMPLERS: dict = {}  # (size, recipe) → the on: device sampler, kept as a worker keeps it


def arm_device(rows, patch, cfg, n, seed, batch) -> tuple[float, float]:
    """(b) CPU s/sample of the ``on: device`` thread loader in its steady state (sampling
    with each draw's margin into its ring of reused batch arrays, warmed up beforehand);
    (b+) of the batched augmentation on the CPU."""
    cfg = cfg.model_copy(update={"on": "device"})
    key = (patch, cfg.model_dump_json())
    if key not in _SAMPLERS:
        sampler = margin_sampler(cfg, [patch] * 3, 5, 1 / 3, seed)
        ring = sampler_ring(sampler, 3)
        for k in range(3):  # fault the ring's pages in, as a training run's first batches do
            fill_batch(sampler, [rows[0]] * batch, [10**6 + k] * batch, cfg, ring)
        _SAMPLERS[key] = sampler
    sampler = _SAMPLERS[key]
    out: list = []

    sample_s = 0.0
    for i in range(0, n, batch):
        seeds = [seed * 1000 + i + j for j in range(batch)]
        picked = [rows[(i + j) % len(rows)] for j in range(batch)]
        c0 = time.process_time()
        x, y = fill_batch(sampler, picked, seeds, cfg, sampler.ring)
        sample_s += (time.process_time() - c0) / n
        out.append((x.copy(), y.copy(), seeds))  # the ring reuses x, y: kept for (b+)
    aug = BatchAugment(cfg, [patch] * 3)

    def augment():
        for x, y, seeds in out:
            with torch.no_grad():
                aug(torch.from_numpy(x), torch.from_numpy(y), seeds)

    return sample_s, _cpu(augment) / n


def arm_nnunet(python: str, rows, patch, n, seed) -> float | None:
    """(c) CPU s/sample of nnU-Net v2's default training transforms (subprocess), or None."""
    if not Path(python).exists():
        return None
    rng = np.random.default_rng(seed)
    shape = np.load(rows[0]["x_path"], mmap_mode="r").shape[1:]
    draws = [
        (
            rows[i % len(rows)]["x_path"],
            rows[i % len(rows)]["y_path"],
            [int(rng.integers(s)) for s in shape],
        )
        for i in range(n)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    arg = json.dumps({"patch": patch, "draws": draws})
    res = subprocess.run(
        [python, "-c", NNUNET_SCRIPT, arg], capture_output=True, text=True, env=env, check=False
    )
    if res.returncode != 0:
        print(f"nnU-Net arm failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return statistics.mean(json.loads(res.stdout.strip().splitlines()[-1])["cpu_s"])


def device_arm(patch: int, cfg: AugmentConfig, batch: int, device: str, reps: int = 5):
    """Wall ms per batch on ``device`` of the batched augmentation (from margin patches) and
    of one training step (``jobs/train_cpu.yaml``'s SegResNet, fp16 autocast on CUDA, AdamW,
    Dice + BCE on regions) at the same patch size."""
    from bratslab.data.augment_draw import affine_margin
    from bratslab.models.zoo import build_model
    from bratslab.train.losses import SegmentationLoss

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    big = [patch + 2 * m for m in affine_margin(cfg, [patch] * 3)]
    x = torch.randn(batch, 5, *big, device=dev)
    x[:, 4] = (x[:, 4] > -1).float()
    y = torch.randint(0, 4, (batch, 1, *big), dtype=torch.uint8, device=dev)
    aug = BatchAugment(cfg, [patch] * 3)
    job = load_job(ROOT / "jobs" / "train_cpu.yaml", [f"data.store={ROOT}"])
    model = build_model(job.model.model_config_only()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = SegmentationLoss("regions")
    xs, ys = aug(x, y, list(range(batch)))

    def step():
        with torch.autocast(dev.type, enabled=dev.type == "cuda"):
            out = model(xs)
        loss = loss_fn(out, ys)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        for k in range(reps):
            fn() if fn is step else aug(x, y, [k * batch + j for j in range(batch)])
        sync()
        return (time.perf_counter() - t0) / reps * 1000

    return timed(lambda: aug(x, y, list(range(batch)))), timed(step)


def _arms(rows: dict, args, r: int) -> list:
    """Round ``r``'s arms: ``(arm, size, recipe, fn)``, ``fn()`` → a tuple of CPU s/sample."""
    n, batch = args.samples, args.batch
    arms = []
    for p in args.sizes:
        for name, cfg in recipes().items():
            arms.append(
                ("a", p, name, lambda p=p, c=cfg: (arm_loader(rows[p], p, c, n, r, batch),))
            )
            arms.append(("b", p, name, lambda p=p, c=cfg: arm_device(rows[p], p, c, n, r, batch)))
    py = args.nnunet_python
    for p in args.sizes:
        arms.append(("s", p, "off", lambda p=p: (arm_plain(rows[p], p, n, r, batch),)))
        arms.append(("c", p, "nnunet", lambda p=p: (arm_nnunet(py, rows[p], p, n, r),)))
    return arms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4, help="samples per arm per round")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--step-s", type=float, default=0.35, help="GPU step s per batch at 128^3")
    ap.add_argument("--nnunet-python", default=NNUNET_PY)
    ap.add_argument("--device-arm-on", default=None, help="run the device arm here (e.g. cpu)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        rows = {p: _cases(Path(tmp) / str(p), p) for p in args.sizes}
        for p in args.sizes:  # warm-up: imports, page cache
            arm_loader(rows[p], p, AugmentConfig(), args.batch, 0, args.batch)
            arm_device(rows[p], p, AugmentConfig(), args.batch, 0, args.batch)
        for r in range(args.rounds):
            arms = _arms(rows, args, r)
            k = r % len(arms)
            for arm, p, name, fn in arms[k:] + arms[:k]:
                for j, v in enumerate(fn()):
                    res.setdefault((arm + "+" * j, p, name), []).append(v)
            print(f"round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    report(res, args)
    if torch.cuda.is_available() or args.device_arm_on:
        device = args.device_arm_on or "cuda"
        for p in args.sizes:
            for name, cfg in recipes().items():
                aug_ms, step_ms = device_arm(p, cfg, args.batch, device)
                print(
                    f"{device} {p}³ {name}: batched augmentation {aug_ms:.1f} ms / batch of "
                    f"{args.batch}, training step {step_ms:.1f} ms ({aug_ms / step_ms:.2f})"
                )
    else:
        print("no GPU here: the device arm (augmentation vs training step on CUDA) skipped")


def report(res: dict, args) -> None:
    load = os.getloadavg()
    med = {k: (statistics.median(v) if None not in v else None) for k, v in res.items()}
    label = {
        "s": "(s) sampling only, augmentation off (today)",
        "a": "(a) on: loader, MONAI per sample",
        "b": "(b) on: device, loader samples only",
        "b+": "(b+) on: device, batched augmentation on CPU",
        "c": "(c) nnU-Net v2 default transforms",
    }
    print(
        f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min); one thread per arm"
    )
    print("| size | recipe | arm | CPU s / sample | loader CPUs one GPU needs |")
    print("|---|---|---|---|---|")
    for (arm, p, name), v in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        step = args.step_s * (p / 128) ** 3
        if v is None:
            print(f"| {p}³ | {name} | {label[arm]} | skipped (no {args.nnunet_python}) | |")
            continue
        need = v * args.batch / step if arm in ("s", "a", "b", "c") else float("nan")
        cell = f"{need:.2f}" if arm != "b+" else "(worker's CPU)"
        print(f"| {p}³ | {name} | {label[arm]} | {v:.4f} | {cell} |")
    for p in args.sizes:
        c = med.get(("c", p, "nnunet"))
        for name in ("default", "scanner"):
            a, b, bp = (med.get((x, p, name)) for x in ("a", "b", "b+"))
            line = f"{p}³ {name}: (a)/(b) {a / b:.1f}x, (b+)/(a) {bp / a:.2f}"
            if c:
                line += f", (c)/(b) {c / b:.1f}x"
            print(line)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
