"""Which TTA path inference runs on this machine: picked by a short measurement, then cached.

Three paths compute the same probabilities (:mod:`bratslab.inference.sliding_window`; equal up to
float rounding, ``tests/unit/inference/test_sliding_window.py``) and differ only in cost:

* ``naive``: one sliding window over the volume per TTA view; each window is transformed, run
  (one model call), transformed back and blended. V tilings and blendings, one view per call.
* ``perview``: one sliding window; each window's V views run one model call each.
* ``batched``: one sliding window; a window's views run as one batch ``(V*B, C, x, y, z)``;
  ``batched:K`` runs K views per call.

Which is fastest depends on the device, the precision, the window size and the network (on a
2-core AVX512-BF16 CPU, batched views were the fastest fp32 path and the slowest bf16 one:
oneDNN's bf16 kernels gain nothing from a larger batch while the batch's activations fall out
of cache). So ``tta_path="auto"`` measures instead of guessing, the first time a network is run
on a machine with a given key::

    device name, threads, precision (float32/bfloat16/float16), memory layout, window size,
    TTA mode, windows per call, network fingerprint (architecture, not weights), torch version

**The measurement** (:func:`choose`): a random volume of exactly one window; each candidate
(:func:`candidates`; ``naive`` always among them) runs the whole TTA on it once per round, two
rounds, the order rotated between rounds, after an untimed warm-up call at every batch size.
On CPU the candidate with the least process CPU time (``time.process_time``; best of its two
rounds) wins, on a GPU the least wall time (``perf_counter`` after a synchronize). CPU time is
what the choice is made on because it does not count the time other processes hold the cores;
it is not immune to them, though: on an overloaded machine PyTorch's waiting OpenMP threads
spin, which counts as CPU time and favours fewer, larger calls (BENCHMARKS.md, TTA). So the
load average is recorded with each choice, and a choice made at a load above the CPU count is
measured again once the machine is quiet (:func:`_busy`). Since ``naive`` is always measured,
the chosen path was never slower than it in the measurement. One log line says what was
chosen, every arm's time, the load and how long it took.

**The cache** is one small JSON file per work directory, ``$BRATSLAB_HOME/cache/tta_paths.json``,
beside the model cache (``cache/models``): the timing depends on the architecture, not the
weights, so one entry serves every fold and every version of a network, whether it came from
MLflow or a checkpoint folder; and the model cache's folders are content-addressed and verified
against their registered hashes, so per-machine data stays out of them. The device name is part
of the key, so a work directory shared by several machines keeps one entry per machine. A
file lock makes concurrent prediction actors on one machine measure once (the others wait and
read the result). An unwritable cache only costs a measurement per process (logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bratslab import atomic
from bratslab.settings import get_settings

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads this module's constants
    import torch
    from torch import nn

log = logging.getLogger(__name__)

TTA_PATH_PATTERN = r"^(auto|naive|perview|batched(:[1-9][0-9]*)?)$"
TTA_PATH_HELP = (
    "How TTA views run: auto (the fastest on this machine, measured once per network, device, "
    "precision and window size, cached in $BRATSLAB_HOME/cache/tta_paths.json), naive (one "
    "sliding window per view), perview (one model call per view), batched (a window's views "
    "in one call; batched:K, K per call). The same probabilities whichever."
)
CACHE_NAME = "tta_paths.json"
ROUNDS = 2
_MEMO: dict[str, str] = {}  # key -> path name, per process (also when the file is unwritable)


@dataclass(frozen=True)
class TTAPath:
    """One way to run the views: ``naive`` (one tiling per view) or one shared tiling with
    ``views_per_call`` views per model call (``None``: all views of a window's shape)."""

    naive: bool = False
    views_per_call: int | None = None

    @property
    def name(self) -> str:
        if self.naive:
            return "naive"
        if self.views_per_call == 1:
            return "perview"
        return "batched" if self.views_per_call is None else f"batched:{self.views_per_call}"


def parse_tta_path(text: str) -> TTAPath | None:
    """``naive`` / ``perview`` / ``batched`` / ``batched:K`` → :class:`TTAPath`; ``auto`` → None.

    Raises:
        ValueError: any other text.
    """
    if not re.match(TTA_PATH_PATTERN, text or ""):
        raise ValueError(
            f"tta_path must be auto, naive, perview, batched or batched:K, not {text!r}"
        )
    if text == "auto":
        return None
    if text == "naive":
        return TTAPath(naive=True, views_per_call=1)
    if text == "perview":
        return TTAPath(views_per_call=1)
    k = text.partition(":")[2]
    return TTAPath(views_per_call=int(k) if k else None)


def candidates(device: torch.device, n_views: int) -> list[TTAPath]:
    """The paths ``auto`` measures: naive, per-view and all views batched; on a GPU also
    batches of 2 and 4 views (less memory than all, and a GPU may already be busy with 4).
    Fewer on CPU, where each arm costs V forward passes of a full window."""
    out = [TTAPath(naive=True, views_per_call=1), TTAPath(views_per_call=1)]
    if device.type != "cpu":
        out += [TTAPath(views_per_call=k) for k in (2, 4) if k < n_views]
    out.append(TTAPath(views_per_call=None))
    return out


def device_name(device: torch.device) -> str:
    """The processor's model name (CPU) or the GPU's, plus the thread count on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    return f"{name}, {torch.get_num_threads()} threads"


def network_fingerprint(models: Sequence[nn.Module]) -> str:
    """A hash of the networks' structure (module tree, parameter names, shapes and dtypes),
    not their weights: every fold or version of one architecture shares it."""
    h = hashlib.sha1()
    for m in models:
        h.update(repr(m).encode())
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
    return h.hexdigest()[:16]


def cache_key(
    models: Sequence[nn.Module],
    device: torch.device,
    precision: str,
    layout: str,
    roi_size: Sequence[int],
    tta: str,
    sw_batch_size: int,
) -> str:
    """The string a measurement is cached under (see the module docstring)."""
    import torch

    roi = "x".join(str(int(r)) for r in roi_size)
    return (
        f"{device_name(device)} | {precision} {layout} | window {roi} | tta {tta} | "
        f"{sw_batch_size} windows per call | network {network_fingerprint(models)} | "
        f"torch {torch.__version__}"
    )


def cache_file() -> Path:
    """``$BRATSLAB_HOME/cache/tta_paths.json``."""
    return get_settings().home / "cache" / CACHE_NAME


@dataclass
class Measurement:
    """Seconds per round of each arm (``cpu``: process CPU time, ``wall``) and the winner."""

    cpu: dict[str, list[float]]
    wall: dict[str, list[float]]
    chosen: str
    by: str  # "cpu" or "wall"
    seconds: float  # the whole measurement, warm-up included


def measure(
    paths: Sequence[TTAPath],
    run: Callable[[TTAPath], None],
    warm_up: Callable[[], None],
    device: torch.device,
    rounds: int = ROUNDS,
) -> Measurement:
    """Time ``run(path)`` for every path, ``rounds`` interleaved rounds after ``warm_up()``;
    the winner has the least CPU time (CPU device) or wall time (GPU), best of its rounds."""
    import torch

    t_start = time.perf_counter()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm_up()
    sync()
    cpu: dict[str, list[float]] = {p.name: [] for p in paths}
    wall: dict[str, list[float]] = {p.name: [] for p in paths}
    for r in range(rounds):
        for p in [*paths[r % len(paths) :], *paths[: r % len(paths)]]:
            t0, c0 = time.perf_counter(), time.process_time()
            run(p)
            sync()
            wall[p.name].append(time.perf_counter() - t0)
            cpu[p.name].append(time.process_time() - c0)
    by = "cpu" if device.type == "cpu" else "wall"
    chosen = pick(cpu if by == "cpu" else wall)
    return Measurement(cpu, wall, chosen, by, time.perf_counter() - t_start)


def pick(seconds: dict[str, list[float]]) -> str:
    """The arm with the least best-of-rounds time (the first listed on a tie)."""
    return min(seconds, key=lambda name: min(seconds[name]))


def choose(
    key: str,
    paths: Sequence[TTAPath],
    run: Callable[[TTAPath], None],
    warm_up: Callable[[], None],
    device: torch.device,
    cache: Path | None = None,
) -> TTAPath:
    """The path cached under ``key`` (this process, then the cache file), or the fastest of
    ``paths`` by :func:`measure`, then cached. Logs one line either way (once per process)."""
    if key in _MEMO:
        return parse_tta_path(_MEMO[key])  # type: ignore[return-value]
    cache = cache or cache_file()
    with _locked(cache):
        entry = _read(cache).get(key)
        if entry is not None and entry.get("path") in {p.name for p in paths} and not _busy(entry):
            _MEMO[key] = entry["path"]
            _announce(f"TTA path {entry['path']} (measured before for {key}; cached in {cache})")
            return parse_tta_path(entry["path"])  # type: ignore[return-value]
        m = measure(paths, run, warm_up, device)
        _MEMO[key] = m.chosen
        _write(cache, key, m)
    _announce(_describe(key, m, cache))
    return parse_tta_path(m.chosen)  # type: ignore[return-value]


def _announce(line: str) -> None:
    """Log ``line`` at INFO; where INFO is not shown (a Ray worker, whose root logger is left at
    WARNING), print it to stderr, which Ray forwards to the driver's console."""
    if log.isEnabledFor(logging.INFO):
        log.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _describe(key: str, m: Measurement, cache: Path) -> str:
    what = "CPU s" if m.by == "cpu" else "wall s"
    primary, other = (m.cpu, m.wall) if m.by == "cpu" else (m.wall, m.cpu)
    arms = ", ".join(
        f"{n} {min(primary[n]):.3f} ({min(other[n]):.3f} {'wall' if m.by == 'cpu' else 'CPU'})"
        for n in primary
    )
    return (
        f"TTA path {m.chosen}: the least {what} on one window (best of {ROUNDS} interleaved "
        f"rounds): {arms}; measured in {m.seconds:.1f} s at load average {_load_avg()} on "
        f"{os.cpu_count()} CPUs for {key}; cached in {cache}"
    )


def _busy(entry: dict) -> bool:
    """A choice measured while the machine was overloaded (1-minute load above its CPU count)
    is measured again once it is quiet (load at most half the CPUs): under load, waiting
    OpenMP threads spin and count as CPU time, which favours fewer, larger calls."""
    then, now, cpus = entry.get("load_avg"), _load_avg(), os.cpu_count() or 1
    return then is not None and now is not None and then > cpus and now <= cpus / 2


def _load_avg() -> float | None:
    """The 1-minute load average: a measurement taken while other work held the cores may
    favour fewer, larger calls (waiting OpenMP threads spin and count as CPU time), so the
    log and the cache entry record it; delete the cache file to measure again."""
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def _read(cache: Path) -> dict[str, dict]:
    try:
        data = json.loads(cache.read_text())
    except (FileNotFoundError, NotADirectoryError):  # no cache yet (or none possible)
        return {}
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); measuring again", cache, e)
        return {}
    return data.get("entries", {}) if isinstance(data, dict) else {}


def _write(cache: Path, key: str, m: Measurement) -> None:
    entries = _read(cache)
    entries[key] = {
        "path": m.chosen,
        "by": m.by,
        "cpu_s": {n: [round(s, 4) for s in v] for n, v in m.cpu.items()},
        "wall_s": {n: [round(s, 4) for s in v] for n, v in m.wall.items()},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg": _load_avg(),
    }
    try:
        atomic.write_json(cache, {"entries": entries})
    except OSError as e:
        log.warning("%s: could not cache the TTA path (%s); this process keeps it", cache, e)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """An exclusive lock on ``cache``'s lock file, so that prediction actors on one machine
    measure one at a time (a second waits, then reads the first's result). No lock where the
    folder cannot be created or ``fcntl`` is missing."""
    try:
        import fcntl

        cache.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache.with_name(cache.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clear_memo() -> None:
    """Forget this process's choices (tests; a cache file edited by hand)."""
    _MEMO.clear()
