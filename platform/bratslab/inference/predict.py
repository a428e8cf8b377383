"""``bratslab predict``: raw BraTS folder → NIfTI segmentations in the source geometry.

Per case: preprocess exactly as at training time (the :class:`PreprocessConfig` recorded in the
model's ``model.json``), sliding-window + TTA inference in store space, threshold (region models)
or argmax (label models), labels in the case's own convention (ET 4 for BraTS 2021, 3 for 2023+;
a post-treatment model's RC 4; an nnU-Net dataset's own label values),
small components removed when the model carries post-processing thresholds
(:mod:`bratslab.postprocess`, ``PredictConfig.postprocess``), then undo the crop and padding
(:func:`restore_to_source`) and write ``PRED/{case}.nii.gz`` with the source affine and header.
Optional ``{case}_prob.nii.gz`` (probabilities, channels last) and ``{case}_std.nii.gz`` (TTA
standard deviation).

Many cases run through Ray Data: a dataset of case rows mapped by a pool of actors, each holding
the models. The model weights travel through the object store (so a model fetched from MLflow on
the driver reaches every node); the raw and output folders must be visible to every worker (a
shared filesystem on a cluster). Every file is written atomically (temp name in the same folder,
then ``os.replace``); finished cases are skipped on a rerun; a case that fails is reported with
the file and the reason while the others go on.

This module is the driver and the Ray Data actor; the pieces live beside it: model payloads,
their cache and the device in :mod:`bratslab.inference.model_loading`, NIfTI writing in
:mod:`bratslab.inference.nifti_out`, probabilities → labels in :mod:`bratslab.data.labels`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bratslab import atomic
from bratslab.cluster import ensure_ray
from bratslab.config import validate
from bratslab.data.config import PreprocessConfig
from bratslab.data.discovery import discover_cases
from bratslab.data.layout import RawCase
from bratslab.data.preprocess import CaseInvalid, preprocess_case, restore_to_source
from bratslab.data.region_set import (
    model_region_set,
    predicted_source_labels,
    to_dataset_values,
)
from bratslab.evaluate.score_report import progress_bar
from bratslab.inference.config import PredictConfig
from bratslab.inference.model_loading import (
    ModelPayload,
    build_models,
    check_ensemble,
    load_payload,
    member_payloads,
    resolve_device,
)
from bratslab.inference.nifti_out import output_paths, write_map, write_nifti
from bratslab.postprocess.config import PostprocessConfig
from bratslab.postprocess.resolve import check_fits_regions, resolve_postprocess

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.json"
# A case whose actor dies (OOM kill, a crash in native code) is tried this many more times on
# a restarted actor, then reported as failed. Ray Data's own default is to restart and retry
# forever, so one case that always kills its actor would never let the run end.
ACTOR_RETRIES = 1
ACTOR_DIED = (
    "the prediction worker died while predicting this case, {tries} times (killed for memory, "
    "or a crash in native code); see the Ray worker logs"
)


@dataclass
class PredictReport:
    """What a prediction run did: written/skipped case ids and failures (case, file, reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def written_labels(probs, info: dict[str, Any], output: str, case: RawCase, cfg: PredictConfig):
    """The label map ``(X, Y, Z)`` uint8 written for ``case`` from the model's probabilities
    ``(C, X, Y, Z)``: in the case's convention, post-processed when thresholds apply, and in an
    nnU-Net dataset's own values for its cases."""
    from bratslab.postprocess.apply import postprocess_labels

    regions = model_region_set(info)
    labels = predicted_source_labels(probs, output, regions, case.et_label, cfg.threshold)
    if isinstance(cfg.postprocess, PostprocessConfig):  # resolved by predict_folder
        labels = postprocess_labels(labels, cfg.postprocess, case.et_label)
    if case.relabel:  # an nnU-Net dataset's case: written in the dataset's own values
        labels = to_dataset_values(labels, case.relabel, regions)
    return labels


def predict_case(
    raw: dict[str, Any], payloads: list[ModelPayload], cfg: PredictConfig, out_dir: str
) -> dict[str, Any]:
    """Predict one raw case (``RawCase.to_dict()``) and write its outputs.

    Returns ``{"case", "status": "written"|"failed", "file", "reason", "seconds"}``; errors are
    caught and reported so one bad case does not stop the others.
    """
    import torch

    from bratslab.inference.sliding_window import predict_probabilities

    t0 = time.perf_counter()
    # The reference seg, if any, is not needed to predict (and must not fail the case).
    case = RawCase.from_dict({**raw, "seg": None})
    paths = output_paths(out_dir, case.id)
    try:
        torch.set_num_threads(cfg.threads)
        info = payloads[0].info
        pre_cfg = validate(PreprocessConfig, info["preprocessing"], "model.json (preprocessing)")
        try:
            pre = preprocess_case(case, pre_cfg, fast_cast=True)  # torch is loaded here anyway
        except CaseInvalid as e:
            first = e.failures[0]
            reason = "; ".join(f.reason for f in e.failures)
            return _failed(case.id, first.file, reason, t0)
        output = payloads[0].output
        models = build_models(payloads)  # built once per actor, not per case
        probs, std = predict_probabilities(
            models,
            pre.x,
            roi_size=[int(s) for s in info["patch_size"]],
            overlap=cfg.overlap,
            tta=cfg.tta,
            sw_batch_size=cfg.sw_batch_size,
            device=resolve_device(cfg.device),
            activation="sigmoid" if output == "regions" else "softmax",
            uncertainty=cfg.uncertainty,
            amp=cfg.amp,
            tta_path=cfg.tta_path,
        )
        meta = pre.meta
        labels = written_labels(probs, info, output, case, cfg)
        affine, header = meta.affine_array(), meta.header()
        if cfg.save_probabilities:
            restored = restore_to_source(probs, meta)
            if output == "labels":  # outside the crop box is background with certainty
                restored[0] = restore_to_source(probs[0], meta, fill=1.0)
            write_map(paths["prob"], restored, affine, header, cfg.prob_dtype)
        if std is not None:
            write_map(paths["std"], restore_to_source(std, meta), affine, header, cfg.prob_dtype)
        # The segmentation goes last: its presence marks the case as done for a rerun.
        write_nifti(paths["seg"], restore_to_source(labels, meta), affine, header)
    except Exception as e:  # report and go on; the traceback is in the worker's log
        log.exception("case %s failed", case.id)
        return _failed(case.id, str(case.files.get("t1n", case.id)), f"{type(e).__name__}: {e}", t0)
    return {
        "case": case.id,
        "status": "written",
        "file": str(paths["seg"]),
        "reason": "",
        "seconds": time.perf_counter() - t0,
    }


def _failed(case_id: str, file: str, reason: str, t0: float) -> dict[str, Any]:
    return {
        "case": case_id,
        "status": "failed",
        "file": file,
        "reason": reason,
        "seconds": time.perf_counter() - t0,
    }


def _is_done(raw_case, out_dir: Path, cfg: PredictConfig) -> bool:
    paths = output_paths(out_dir, raw_case.id)
    needed = [paths["seg"]]
    if cfg.save_probabilities:
        needed.append(paths["prob"])
    if cfg.uncertainty:
        needed.append(paths["std"])
    return all(p.is_file() for p in needed)


class CasePredictor:
    """Ray Data actor: predicts the case of each row ``{"case": RawCase JSON}`` into ``out_dir``.

    Models are rebuilt once per actor from the payloads (an object ref: the weights travel
    through the object store once, to every node that runs an actor).
    """

    def __init__(self, payloads_ref: Any, cfg: dict[str, Any], out_dir: str):
        import ray  # Ray: fetch the shared model payloads

        self.payloads: list[ModelPayload] = ray.get(payloads_ref[0])
        self.cfg = PredictConfig.model_validate(cfg)
        self.out_dir = out_dir

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return predict_case(json.loads(row["case"]), self.payloads, self.cfg, self.out_dir)


def _predict_with_ray_data(
    cases: list, payloads: list[ModelPayload], cfg: PredictConfig, out_dir: Path
):
    """Yield :func:`predict_case` results as cases finish: a Ray Data dataset of case rows (one
    block each, so cases balance over actors) mapped by a pool of :class:`CasePredictor` actors
    (``cfg.workers`` at most; ``cfg.threads`` CPUs and, when a GPU is used, one GPU each)."""
    import ray
    import ray.data

    ensure_ray()
    # Wrapped in a list so Ray passes the ref itself to the actor rather than resolving it
    # on the driver for every actor's constructor.
    payloads_ref = [ray.put(payloads)]
    limit = min(cfg.workers or len(cases), len(cases))
    gpus = 0.0
    if cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0:
        gpus = 1.0  # Ray hides GPUs from workers that did not ask for one
    rows = [{"case": json.dumps(c.to_dict())} for c in cases]
    ctor = {"payloads_ref": payloads_ref, "cfg": cfg.model_dump(), "out_dir": str(out_dir)}
    ids = [c.id for c in cases]
    yield from map_rows_recovering_lost(rows, ids, CasePredictor, ctor, limit, cfg.threads, gpus)


def map_rows_with_actors(
    rows: list[dict[str, Any]],
    actor_cls: type,
    ctor_kwargs: dict[str, Any],
    max_actors: int,
    num_cpus: float,
    num_gpus: float = 0.0,
):
    """Yield ``actor_cls(**ctor_kwargs)(row)`` for each row as it finishes, over a Ray Data
    pool of 1..``max_actors`` actors, one row per block (so rows balance over actors).

    An error inside a row's call is the actor's to report (``predict_case`` returns a "failed"
    row). An actor that dies (killed for memory, a crash in native code) is restarted and its
    row retried at most :data:`ACTOR_RETRIES` times (Ray Data's default is forever); then that
    row is dropped (no result) and the others go on. A row queued on the same actor when it
    died shares its fate and may be dropped too (:func:`map_rows_recovering_lost` reruns those
    alone; the caller reports every row still missing).
    (``max_tasks_in_flight_per_actor=1`` would avoid that, but in Ray 2.60 a pool whose actor
    died for good then stalls instead of finishing.)
    """
    import warnings

    import ray.data

    # A dataset copies the current DataContext when it is built: set the budget before.
    context = ray.data.DataContext.get_current()
    saved = context.max_errored_blocks
    context.max_errored_blocks = len(rows)  # a dead row's block errors; the rest go on
    try:
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for an actor's restarts: **ray_remote_args it is.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
                actor_cls,
                fn_constructor_kwargs=ctor_kwargs,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                **actor_retry_args(),
            )
    finally:
        context.max_errored_blocks = saved
    yield from ds.iter_rows()


def map_rows_recovering_lost(
    rows: list[dict[str, Any]],
    ids: list[str],
    actor_cls: type,
    ctor_kwargs: dict[str, Any],
    max_actors: int,
    num_cpus: float,
    num_gpus: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """:func:`map_rows_with_actors`, then each row that came back without a result, alone.

    An actor that dies takes the rows queued on it down too; run alone, in an actor of its own
    that is not restarted, a row that was only queued there comes back, and only the row that
    kills its actor is lost again. ``ids[i]`` is the ``"case"`` of row ``i``'s result. A single
    lost row is not rerun: it is the one that killed its actor (after its bounded retries).
    """
    seen = set()
    pool = (actor_cls, ctor_kwargs, max_actors, num_cpus, num_gpus)
    for result in map_rows_with_actors(rows, *pool):
        seen.add(result["case"])
        yield result
    lost = [row for row, i in zip(rows, ids, strict=True) if i not in seen]
    if len(lost) < 2:
        return
    log.warning("%d cases lost with a dead actor; predicting each alone once more", len(lost))
    for row in lost:
        result = map_row_alone(row, actor_cls, ctor_kwargs, num_cpus, num_gpus)
        if result is not None:
            yield result


class _OneRow:
    """Ray actor: ``actor_cls(**ctor_kwargs)`` applied to one row (a Ray Data pool of one actor
    stalls once that actor is dead for good, so a lone row runs in a plain actor instead)."""

    def __init__(self, actor_cls: type, ctor_kwargs: dict[str, Any]) -> None:
        self.fn = actor_cls(**ctor_kwargs)

    def run(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.fn(row)


def map_row_alone(row, actor_cls, ctor_kwargs, num_cpus, num_gpus) -> dict[str, Any] | None:
    """The row's result from a fresh, never restarted actor; None if that actor dies."""
    import ray

    actor = (
        ray.remote(_OneRow)
        .options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        .remote(actor_cls, ctor_kwargs)
    )
    try:
        return ray.get(actor.run.remote(row))
    except ray.exceptions.RayActorError:
        return None
    finally:
        ray.kill(actor)


def actor_retry_args() -> dict[str, int]:
    """Ray remote args of the prediction actors: bounded restarts and retries of a case."""
    return {"max_restarts": ACTOR_RETRIES, "max_task_retries": ACTOR_RETRIES}


def check_output_dir(out_dir: str | Path) -> None:
    """``out_dir`` must be a folder or creatable as one.

    Raises:
        ValueError: it, or the nearest existing parent, is a file (naming it).
    """
    out_dir = Path(out_dir)
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "" if path == out_dir else f" (in {out_dir})"
                raise ValueError(
                    f"{path}{what}: exists and is not a folder; --output names the folder "
                    "predictions are written to"
                )
            return


def predict_folder(
    model_refs: list[str] | str,
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: PredictConfig | None = None,
    *,
    progress: bool = True,
) -> PredictReport:
    """Predict every case of ``raw_dir`` into ``out_dir``, cases spread over the Ray cluster.

    ``model_refs``: one or more checkpoint folders or MLflow URIs; several form an ensemble
    (probabilities averaged). Cases already predicted are skipped unless ``cfg.overwrite``.
    Failures are listed in ``out_dir/failures.json`` (case, file, reason). Post-processing
    thresholds are resolved here, once (:func:`bratslab.postprocess.resolve.resolve_postprocess`).
    """
    cfg = cfg or PredictConfig()
    t0 = time.perf_counter()
    check_output_dir(out_dir)  # before the models load: a typo costs nothing
    cases = discover_cases(raw_dir)  # likewise the input folder (FileNotFoundError)
    if not cases:
        raise FileNotFoundError(f"{raw_dir}: no BraTS cases found")
    refs = [model_refs] if isinstance(model_refs, (str, Path)) else list(model_refs)
    # An ensemble version counts as its members: probabilities are averaged over them, and an
    # --uncertainty map spreads over members as well as over TTA views.
    payloads = member_payloads([load_payload(r) for r in refs])
    check_ensemble(payloads)
    pp = resolve_postprocess(cfg.postprocess, refs)
    check_fits_regions(pp, payloads[0].regions, payloads[0].source)
    cfg = cfg.model_copy(update={"postprocess": pp if pp is not None else "none"})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)

    report = PredictReport()
    todo = []
    for c in cases:
        if c.problems:  # found by discovery: missing (all named in one) or duplicate modality
            reason = "; ".join(r for _, r in c.problems)
            report.failures.append({"case": c.id, "file": c.problems[0][0], "reason": reason})
        elif not cfg.overwrite and _is_done(c, out_dir, cfg):
            report.skipped.append(c.id)
        else:
            todo.append(c)

    if todo:
        pending = {c.id: c for c in todo}
        with progress_bar(progress, len(todo), "predict") as advance:
            for result in _predict_with_ray_data(todo, payloads, cfg, out_dir):
                pending.pop(result["case"], None)
                if result["status"] == "written":
                    report.written.append(result["case"])
                else:
                    report.failures.append({k: result[k] for k in ("case", "file", "reason")})
                ok = "ok" if result["status"] == "written" else "FAILED"
                advance(f"predict {result['case']} {ok}")
        for case in pending.values():  # no row came back: its actor died, retries spent
            file = str(case.files.get("t1n", case.id))
            reason = ACTOR_DIED.format(tries=1 + ACTOR_RETRIES)
            report.failures.append({"case": case.id, "file": file, "reason": reason})
    failures_path = out_dir / FAILURES_FILE
    if report.failures:
        atomic.write_json(failures_path, {"failures": report.failures})
    elif failures_path.exists():
        failures_path.unlink()
    report.seconds = time.perf_counter() - t0
    return report


def report_json(report: PredictReport) -> str:
    return json.dumps(
        {
            "written": report.written,
            "skipped": report.skipped,
            "failures": report.failures,
            "seconds": round(report.seconds, 2),
        },
        indent=2,
    )


__all__ = [
    "ACTOR_RETRIES",
    "FAILURES_FILE",
    "CasePredictor",
    "PredictReport",
    "predict_case",
    "predict_folder",
    "report_json",
]
