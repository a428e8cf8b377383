"""Load time of one 4-modality 240x240x155 case: ``.nii.gz`` via nibabel vs the ``.npy`` store.

Three readings, each the median of several repeats with the page cache warm (the files are
read once before timing, so this measures decompression and parsing, not the disk):

* nibabel: ``np.asanyarray(nib.load(p).dataobj)`` for the four modalities (int16, the
  cheapest nibabel path; ``get_fdata()`` would add a float64 conversion on top);
* store, full: ``np.load({id}_x.npy)`` (all 5 channels of the cropped, padded case);
* store, patch: a random 128^3 patch of all channels from ``np.load(..., mmap_mode="r")``.

Targets (issue 2): >= 10x for the full volume, >= 40x for the patch.

    .venv/bin/python benchmarks/bench_io.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bratslab.data.config import PreprocessConfig
from bratslab.data.discovery import discover_cases
from bratslab.data.preprocess import preprocess_case, write_case
from bratslab.data.synth import synthesize_dataset


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()``.

    CPU time (this process, all threads) is reported beside wall time because the machine is
    shared: under contention wall time includes waiting for a core, CPU time does not.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="Repeats per reading (median).")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        raw, store = Path(tmp) / "raw", Path(tmp) / "store"
        synthesize_dataset(raw, 1, "brats2023", seed=0, shape=(240, 240, 155))
        (case,) = discover_cases(raw)
        pre = preprocess_case(case, PreprocessConfig(dtype=args.dtype))
        write_case(store, pre)
        xpath = store / f"{case.id}_x.npy"
        paths = [case.files[m] for m in ("t1n", "t1c", "t2w", "t2f")]
        for p in [*paths, xpath]:
            p.read_bytes()  # warm the page cache for both sides

        def load_nifti():
            return [np.asanyarray(nib.load(p).dataobj) for p in paths]

        def load_full():
            return np.load(xpath)

        shape = np.load(xpath, mmap_mode="r").shape
        rng = np.random.default_rng(0)

        def load_patch():
            lo = [int(rng.integers(0, s - 128 + 1)) for s in shape[1:]]
            x = np.load(xpath, mmap_mode="r")
            return np.ascontiguousarray(x[:, lo[0] : lo[0] + 128, lo[1] : lo[1] + 128, lo[2] :
                                          lo[2] + 128])  # fmt: skip

        assert load_patch().shape == (shape[0], 128, 128, 128)
        t_nii = _median_time(load_nifti, args.repeats)
        t_full = _median_time(load_full, args.repeats * 3)
        t_patch = _median_time(load_patch, args.repeats * 5)
        nii_mb = sum(p.stat().st_size for p in paths) / 1e6
        npy_mb = xpath.stat().st_size / 1e6

    print(f"case 240x240x155, 4 modalities; store shape {list(shape)} {args.dtype}")
    print("| read | size on disk | median wall | speed-up (wall) | median CPU | speed-up (CPU) |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("nibabel, 4 x .nii.gz (int16 dataobj)", f"{nii_mb:.1f} MB", t_nii),
        ("store {id}_x.npy, full (5 ch)", f"{npy_mb:.1f} MB", t_full),
        ("store {id}_x.npy, 128^3 patch via mmap", "-", t_patch),
    ]
    for name, size, (wall, cpu) in rows:
        print(
            f"| {name} | {size} | {wall * 1e3:.1f} ms | {t_nii[0] / wall:.0f}x "
            f"| {cpu * 1e3:.1f} ms | {t_nii[1] / max(cpu, 1e-9):.0f}x |"
        )
    full, patch = t_nii[0] / t_full[0], t_nii[0] / t_patch[0]
    print(
        f"targets (wall): full >= 10x: {'met' if full >= 10 else 'MISSED'} ({full:.0f}x); "
        f"patch >= 40x: {'met' if patch >= 40 else 'MISSED'} ({patch:.0f}x)"
    )


if __name__ == "__main__":
    main()
