"""Preprocess a raw dataset into a store: Ray tasks, bounded concurrency, resumable, atomic.

Each case is one Ray task that reads its raw files and writes its own outputs (so on a cluster
RAW and OUT live on a shared filesystem and only small result dicts travel back). A case is
skipped when its ``{id}_meta.json`` names the same input sha256s and preprocessing hash and
its arrays are complete; a bad case is quarantined (listed in ``failures.json``, its stale
outputs removed) while all others go on. ``dataset.json`` is rebuilt from the per-case metas,
sorted, so an interrupted and resumed run ends byte-identical to an uninterrupted one. It lists
every case file's sha256 and size (``"files"``), which each task computes for its own case.

``OUT`` may be ``s3://bucket/prefix``: the store is then built in this node's cache folder for
that URI (:func:`bratslab.data.remote.cache_dir`), each task uploads its case's files as soon
as they are made (skipping a case the bucket already holds), and the driver uploads
``failures.json`` and, last, ``dataset.json`` (see :mod:`bratslab.data.remote`).

A full disk (``ENOSPC``/``EDQUOT`` while writing a case or the manifest) is not a bad case: the
run stops with :class:`DiskFullError`, the case being written is removed, and ``dataset.json``
and ``failures.json`` are left as they were; cases finished before it stay on disk, unlisted,
for the rerun (once there is room) to find complete and skip.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bratslab import atomic
from bratslab.cluster import ensure_ray
from bratslab.data.discovery import discover_cases
from bratslab.data.layout import RawCase
from bratslab.data.meta import CaseMeta
from bratslab.data.nnunet import read_splits
from bratslab.data.preprocess import (
    CaseInvalid,
    case_paths,
    outputs_complete,
    preprocess_case,
    write_case,
)
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.profiles import get_profile
from bratslab.data.remote import cache_dir, is_remote, parse_uri, upload_group, upload_manifest
from bratslab.data.store import FAILURES, build_manifest, case_digests, write_manifest
from bratslab.data.validate import Failure, file_hashes

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """Outcome of :func:`run_preprocess`."""

    out: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # summed seconds per phase
    wall_s: float = 0.0
    manifest: dict = field(default_factory=dict)
    uri: str | None = None  # the s3:// store written (``out`` is then its local build folder)
    uploaded: int = 0  # files sent to ``uri`` by this run (0 when the bucket had them all)

    @property
    def quarantined(self) -> list[str]:
        return sorted({f.case for f in self.failures})

    @property
    def exit_code(self) -> int:
        """0: every case is in the store; 1: some cases were quarantined."""
        return 1 if self.failures else 0


class DiskFullError(OSError):
    """The store's file system is full; nothing was recorded about the run's cases."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")  # numpy's tofile/np.save


def _is_disk_full(e: BaseException | None, folder: str | Path) -> bool:
    """``e`` (or what it was raised from) is ENOSPC / EDQUOT, or a short write (numpy reports
    one without an errno) while ``folder``'s file system has less room than was requested."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        short = _SHORT_WRITE.search(str(e)) if isinstance(e, OSError) else None
        if short is not None:
            try:
                return shutil.disk_usage(folder).free < int(short.group(1))
            except OSError:
                return False
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


# From this many cases per worker on, a worker imports torch once for its fast float16 cast
# (a few seconds of import against ~0.05 s CPU saved per case; see preprocess._store_into).
FAST_CAST_MIN_CASES = 32


def process_one(
    case_dict: dict,
    out_dir: str,
    cfg_dict: dict,
    fast_cast: bool = False,
    upload_to: str | None = None,
) -> dict:
    """Preprocess and write one case unless its outputs are already complete (a Ray task body).

    ``fast_cast``: cast to float16 through torch (imported once per process; identical bytes),
    decided by the caller from the run's size (:data:`FAST_CAST_MIN_CASES`).
    ``upload_to``: an ``s3://`` store to upload the case's files to (unless it has them).

    Returns:
        ``{"id", "status": "done"|"skipped"|"failed", "meta": dict|None, "failures": [...],
        "files": {name: {"sha256", "size"}}, "uploaded": n, "timings": {phase: s}}``.
    """
    case = RawCase.from_dict(case_dict)
    cfg = PreprocessConfig.model_validate(cfg_dict)
    result: dict = {"id": case.id, "meta": None, "failures": [], "files": {}, "timings": {}}
    try:
        t0 = time.perf_counter()
        hashes = file_hashes(case) if not case.problems else None
        if hashes is not None:
            meta = outputs_complete(out_dir, case, cfg, hashes)
            if meta is not None:
                result.update(status="skipped", meta=meta.model_dump(mode="json"))
                result["timings"]["check"] = time.perf_counter() - t0
                return _digest_and_upload(result, out_dir, upload_to)
        result["timings"]["check"] = time.perf_counter() - t0
        pre = preprocess_case(case, cfg, fast_cast=fast_cast)
        write_case(out_dir, pre)
        result["timings"].update(pre.timings)
        result.update(status="done", meta=pre.meta.model_dump(mode="json"))
        _digest_and_upload(result, out_dir, upload_to)
    except CaseInvalid as e:
        _remove_outputs(out_dir, case.id)
        result.update(status="failed", failures=[f.to_dict() for f in e.failures])
    except Exception as e:  # one broken case must never stop the others
        _remove_outputs(out_dir, case.id)
        if _is_disk_full(
            e, out_dir
        ):  # not the case's fault: the run stops (see the module docstring)
            reason = f"disk full while writing case {case.id} to {out_dir} ({e})"
            result.update(status="disk_full", reason=reason)
            return result
        reason = f"internal error while preprocessing: {type(e).__name__}: {e}"
        result.update(status="failed", failures=[{"case": case.id, "file": "", "reason": reason}])
    return result


def _digest_and_upload(result: dict, out_dir: str | Path, upload_to: str | None) -> dict:
    """Hash the case's files into ``result["files"]`` and upload them to ``upload_to``."""
    t0 = time.perf_counter()
    paths = case_paths(out_dir, result["id"])
    names = [paths[k].name for k in ("x", "y", "meta_npy", "meta_json") if paths[k].is_file()]
    result["files"] = case_digests([Path(out_dir) / n for n in names])
    t1 = time.perf_counter()
    result["timings"]["hash"] = t1 - t0
    if upload_to is not None:
        try:  # {id}_meta.json last: the marker of a complete case in the bucket
            result["uploaded"] = upload_group(Path(out_dir), names, upload_to)
        except OSError as e:
            raise OSError(f"uploading {result['id']} to {upload_to} failed: {e}") from e
        result["timings"]["upload"] = time.perf_counter() - t1
    return result


def _remove_outputs(out_dir: str | Path, case_id: str) -> None:
    # meta.json first: without it the case no longer counts as complete.
    paths = case_paths(out_dir, case_id)
    for key in ("meta_json", "x", "y", "meta_npy"):
        paths[key].unlink(missing_ok=True)


def _iter_ray(
    cases: list[RawCase], out: Path, cfg: PreprocessConfig, workers: int, upload_to: str | None
):
    """Yield task results as they finish, with at most ``workers`` tasks in flight."""
    import ray  # Ray: only imported where distribution happens

    ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=1)(process_one)  # Ray: one task per case
    cfg_dict = cfg.model_dump(mode="json")
    fast = len(cases) >= FAST_CAST_MIN_CASES * workers
    pending = list(reversed(cases))
    inflight: dict = {}
    while pending or inflight:
        while pending and len(inflight) < workers:
            case = pending.pop()
            inflight[task.remote(case.to_dict(), str(out), cfg_dict, fast, upload_to)] = case
        done, _ = ray.wait(list(inflight), num_returns=1)  # Ray: first finished task
        for ref in done:
            case = inflight.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # worker died (OOM, node lost): quarantine, go on
                reason = f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}"
                yield {
                    "id": case.id,
                    "status": "failed",
                    "meta": None,
                    "failures": [{"case": case.id, "file": "", "reason": reason}],
                    "timings": {},
                }


def _iter_local(
    cases: list[RawCase], out: Path, cfg: PreprocessConfig, upload_to: str | None
) -> Iterable[dict]:
    cfg_dict = cfg.model_dump(mode="json")
    fast = len(cases) >= FAST_CAST_MIN_CASES
    for case in cases:
        yield process_one(case.to_dict(), str(out), cfg_dict, fast, upload_to)


def run_preprocess(
    raw: str | Path,
    out: str | Path,
    cfg: PreprocessConfig | None = None,
    workers: int = 2,
    *,
    use_ray: bool = True,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
    profile: str | None = None,
    splits: str | Path | None = None,
) -> RunReport:
    """Preprocess every case under ``raw`` into the store ``out``.

    Args:
        raw: raw dataset folder (any BraTS layout, see :mod:`bratslab.data.layout`).
        out: store folder (created), or an ``s3://bucket/prefix`` string (built in this node's
            cache folder for it and uploaded; see the module docstring).
        cfg: preprocessing settings (default: ``PreprocessConfig()``).
        workers: at most this many cases in flight (Ray tasks, 1 CPU each).
        use_ray: False (or ``workers == 0``) processes in this process, one case at a time.
        progress: show a rich progress bar on stderr.
        on_result: called with each case's result dict as it arrives.
        profile: challenge profile every case is read in (name or alias, see
            :mod:`bratslab.data.profiles`); None: detected per case from names and labels.
        splits: nnU-Net ``splits_final.json`` whose folds become the store's, exactly.

    Returns:
        :class:`RunReport`; ``OUT/dataset.json`` and ``OUT/failures.json`` are written.

    Raises:
        ConfigError: ``out`` is a malformed or unsupported URI.
        DiskFullError: the store's disk filled up (nothing recorded; see the module docstring).
    """
    t0 = time.perf_counter()
    cfg = cfg or PreprocessConfig()
    uri = str(parse_uri(out)) if isinstance(out, str) and is_remote(out) else None
    # Absolute paths: Ray workers need not share the driver's working directory.
    raw, out = Path(raw).absolute(), (cache_dir(uri) if uri else Path(out).absolute())
    out.mkdir(parents=True, exist_ok=True)
    swept = atomic.remove_stale_temps(out)
    if swept:
        log.info("removed %d temp files left by an interrupted run", swept)
    if profile is not None:
        profile = get_profile(profile).name  # an unknown name fails before any work
    cases = _with_profile(discover_cases(raw, profile), profile)
    folds = _read_splits(splits, cases)
    report = RunReport(out=out, uri=uri)
    if not cases:
        results: Iterable[dict] = iter(())
    elif use_ray and workers >= 1:
        results = _iter_ray(cases, out, cfg, workers, uri)
    else:
        results = _iter_local(cases, out, cfg, uri)
    metas, files = _collect(results, report, len(cases), progress, on_result)

    report.failures.sort(key=lambda f: (f.case, f.file, f.reason))
    report.manifest = build_manifest(metas, cfg, report.quarantined, files, profile, folds)
    try:
        write_manifest(out, report.manifest)
        _write_if_changed(out / FAILURES, [f.to_dict() for f in report.failures])
    except OSError as e:
        if _is_disk_full(e, out):
            raise DiskFullError(f"disk full while writing the manifest of {out} ({e})") from e
        raise
    if uri:
        report.uploaded += upload_manifest(out, uri, extra=[FAILURES])  # dataset.json last
    report.processed.sort()
    report.skipped.sort()
    report.wall_s = time.perf_counter() - t0
    return report


def _with_profile(cases: list[RawCase], profile: str | None) -> list[RawCase]:
    """Every case read in ``profile`` (its own, e.g. an nnU-Net dataset's, when None)."""
    if profile is None:
        return cases
    return [dataclasses.replace(c, profile=profile) for c in cases]


def _read_splits(splits: str | Path | None, cases: list[RawCase]) -> list[dict] | None:
    """The folds of ``splits`` (nnU-Net ``splits_final.json``), checked against the cases.

    Raises:
        ValueError: unreadable splits, or ids that are no case of the dataset.
    """
    if splits is None:
        return None

    folds = read_splits(splits)
    unknown = sorted({i for f in folds for i in f["train"] + f["val"]} - {c.id for c in cases})
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{splits}: ids {unknown[:5]}{more} are no case of the dataset")
    return folds


def _collect(
    results: Iterable[dict],
    report: RunReport,
    total: int,
    progress: bool,
    on_result: Callable[[dict], None] | None,
) -> tuple[list[CaseMeta], dict[str, dict]]:
    """Fold task results into ``report`` as they arrive (with a progress bar on stderr);
    return the metas and file digests of the cases in the store."""
    metas: list[CaseMeta] = []
    files: dict[str, dict] = {}
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        bar.start()
        tid = bar.add_task("preprocess", total=total)
    try:
        for res in results:
            if res["status"] == "disk_full":
                raise DiskFullError(res["reason"])
            if res["status"] == "failed":
                report.failures.extend(Failure(**f) for f in res["failures"])
            else:
                metas.append(CaseMeta.model_validate(res["meta"]))
                files.update(res["files"])
                report.uploaded += res.get("uploaded", 0)
                (report.processed if res["status"] == "done" else report.skipped).append(res["id"])
            for k, v in res["timings"].items():
                report.timings[k] = report.timings.get(k, 0.0) + v
            if on_result:
                on_result(res)
            if bar is not None:
                bar.update(tid, advance=1, description=f"preprocess {res['id']}")
    finally:
        if bar is not None:
            bar.stop()
    return metas, files


def _write_if_changed(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return
    atomic.write_text(path, text)
