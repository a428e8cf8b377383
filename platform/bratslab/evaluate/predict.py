"""``bratslab predict``: raw BraTS folder → NIfTI segmentations in the source geometry.

Per case: preprocess exactly as at training time (the :class:`PreprocessConfig` recorded in the
model's ``model.json``), sliding-window + TTA inference in store space, threshold (region models)
or argmax (label models), labels in the case's own convention (ET 4 for BraTS 2021, 3 for 2023+),
then undo the crop and padding (:func:`restore_to_source`) and write ``PRED/{case}.nii.gz`` with
the source affine and header. Optional ``{case}_prob.nii.gz`` (probabilities, channels last) and
``{case}_std.nii.gz`` (TTA standard deviation).

Many cases run through Ray Data: a dataset of case rows mapped by a pool of actors, each holding
the models. The model weights travel through the object store (so a model fetched from MLflow on
the driver reaches every node); the raw and output folders must be visible to every worker (a
shared filesystem on a cluster). Every file is written atomically (temp name in the same folder,
then ``os.replace``); finished cases are skipped on a rerun; a case that fails is reported with
the file and the reason while the others go on.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bratslab import atomic
from bratslab.config import StrictModel, validate

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.json"


class PredictConfig(StrictModel):
    """Options of ``bratslab predict``."""

    tta: Literal["none", "flips", "flips+rot90"] = Field(
        default="flips", description="Test-time augmentation: none, 8 flips, or 16 flips+rot90."
    )
    overlap: float = Field(default=0.5, ge=0.0, lt=1.0, description="Sliding-window overlap.")
    sw_batch_size: int = Field(default=1, ge=1, description="Windows per model call (× TTA).")
    threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Probability threshold of region models."
    )
    save_probabilities: bool = Field(
        default=False, description="Also write {case}_prob.nii.gz (X, Y, Z, C)."
    )
    uncertainty: bool = Field(
        default=False, description="Also write {case}_std.nii.gz: std over TTA/ensemble passes."
    )
    prob_dtype: Literal["uint8", "float32"] = Field(
        default="uint8",
        description="Probability/uncertainty maps as float32, or uint8 with scl_slope 1/255 "
        "(4x smaller; readers' get_fdata() still returns values in [0, 1]). NIfTI-1 has no "
        "float16.",
    )
    amp: bool = Field(default=True, description="Autocast: bf16 on CPU, fp16 on CUDA.")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    threads: int = Field(default=1, ge=1, description="CPUs (torch threads) per prediction actor.")
    workers: int = Field(
        default=0,
        ge=0,
        description="Prediction actors at most, one case each at a time (0: no cap).",
    )
    overwrite: bool = Field(default=False, description="Redo cases whose output exists.")


@dataclass(frozen=True)
class ModelPayload:
    """One model as plain data (JSON info + weights-only bytes) to ship to Ray workers."""

    info: dict[str, Any]
    weights: bytes
    source: str

    @property
    def key(self) -> str:
        return hashlib.sha1(self.weights).hexdigest()


@dataclass
class PredictReport:
    """What a prediction run did: written/skipped case ids and failures (case, file, reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def resolve_model_dir(ref: str | Path) -> Path:
    """A local model directory for a checkpoint folder or an MLflow model URI."""
    from bratslab.models.weights import INFO_FILE, WEIGHTS_FILE

    path = Path(str(ref)).expanduser()
    if (path / INFO_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    if ":/" not in str(ref):  # a local path; do not import mlflow just to say it is missing
        raise FileNotFoundError(
            f"{path}: not a model directory (needs {WEIGHTS_FILE} and {INFO_FILE})"
        )
    # MLflow URIs (runs:/, models:/) resolve through the tracking module, the only mlflow user.
    from bratslab.tracking.model_store import fetch_model_dir

    return fetch_model_dir(str(ref))


def load_payload(ref: str | Path) -> ModelPayload:
    """Read ``model.json`` + ``model.pt`` of ``ref`` (checked by rebuilding the model once)."""
    from bratslab.models.weights import WEIGHTS_FILE, load_model_dir, read_model_info

    directory = resolve_model_dir(ref)
    _, info = read_model_info(directory)
    for key in ("preprocessing", "patch_size"):
        if key not in info:
            raise ValueError(f"{directory / 'model.json'}: missing {key!r} (needed to predict)")
    load_model_dir(directory)  # fail here, naming the file, rather than in every worker
    return ModelPayload(info=info, weights=(directory / WEIGHTS_FILE).read_bytes(), source=str(ref))


def check_ensemble(payloads: list[ModelPayload]) -> None:
    """Ensemble members must share preprocessing, patch size and output kind."""
    if not payloads:
        raise ValueError("predict needs at least one model")
    first = payloads[0]
    for p in payloads[1:]:
        for key in ("preprocessing", "patch_size"):
            if p.info.get(key) != first.info.get(key):
                raise ValueError(
                    f"ensemble: {p.source} has a different {key!r} than {first.source}"
                )
        if p.info["model"].get("output") != first.info["model"].get("output"):
            raise ValueError(f"ensemble: {p.source} and {first.source} differ in output kind")


_MODEL_CACHE: dict[str, Any] = {}  # per worker process: weights hash → built model


def build_from_payload(payload: ModelPayload):
    """Rebuild the network of ``payload`` (cached per process) in eval mode on CPU."""
    import torch

    from bratslab.models.config import ModelConfig
    from bratslab.models.zoo import build_model

    if payload.key not in _MODEL_CACHE:
        cfg = validate(ModelConfig, payload.info["model"], f"{payload.source} (model.json)")
        model = build_model(cfg)
        state = torch.load(io.BytesIO(payload.weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        _MODEL_CACHE.clear()  # keep one ensemble's worth; workers serve one run at a time
        _MODEL_CACHE[payload.key] = model.eval()
    return _MODEL_CACHE[payload.key]


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def output_paths(out_dir: str | Path, case_id: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "seg": out_dir / f"{case_id}.nii.gz",
        "prob": out_dir / f"{case_id}_prob.nii.gz",
        "std": out_dir / f"{case_id}_std.nii.gz",
    }


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, header, slope: float = 1.0
) -> None:
    """Write ``data`` as ``.nii.gz`` with the source ``affine``/``header``, atomically.

    Values are stored as they are (``scl_slope`` 1, or ``slope`` for quantised maps), whatever
    scaling the source header had.
    """
    import nibabel as nib

    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(slope, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    # Level 1: segmentations compress well anyway, probability maps are big and slow at 9.
    atomic.write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1))


def probabilities_to_labels(
    probs: np.ndarray, output: str, et_label: int, threshold: float = 0.5
) -> np.ndarray:
    """Store-space probabilities ``(C, X, Y, Z)`` → labels ``(X, Y, Z)`` uint8, source convention.

    Region models (``output="regions"``, sigmoid WT/TC/ET): threshold, then nested
    reconstruction (ET → ``et_label``, TC∖ET → 1, WT∖TC → 2). Label models (softmax over store
    labels 0..3): argmax, then ET 3 → ``et_label``.
    """
    from bratslab.data.labels import from_store_labels, regions_to_labels

    if output == "regions":
        return regions_to_labels(probs >= threshold, et_label=et_label)
    return from_store_labels(np.argmax(probs, axis=0).astype(np.uint8), et_label)


def predict_case(
    raw: dict[str, Any], payloads: list[ModelPayload], cfg: PredictConfig, out_dir: str
) -> dict[str, Any]:
    """Predict one raw case (``RawCase.to_dict()``) and write its outputs.

    Returns ``{"case", "status": "written"|"failed", "file", "reason", "seconds"}``; errors are
    caught and reported so one bad case does not stop the others.
    """
    import torch

    from bratslab.data.config import PreprocessConfig
    from bratslab.data.layout import RawCase
    from bratslab.data.preprocess import CaseInvalid, preprocess_case, restore_to_source
    from bratslab.evaluate.inference import predict_probabilities

    t0 = time.perf_counter()
    # The reference seg, if any, is not needed to predict (and must not fail the case).
    case = RawCase.from_dict({**raw, "seg": None})
    paths = output_paths(out_dir, case.id)
    try:
        torch.set_num_threads(cfg.threads)
        info = payloads[0].info
        pre_cfg = validate(PreprocessConfig, info["preprocessing"], "model.json (preprocessing)")
        try:
            pre = preprocess_case(case, pre_cfg)
        except CaseInvalid as e:
            first = e.failures[0]
            reason = "; ".join(f.reason for f in e.failures)
            return _failed(case.id, first.file, reason, t0)
        output = info["model"].get("output", "regions")
        models = [build_from_payload(p) for p in payloads]
        probs, std = predict_probabilities(
            models,
            pre.x,
            roi_size=[int(s) for s in info["patch_size"]],
            overlap=cfg.overlap,
            tta=cfg.tta,
            sw_batch_size=cfg.sw_batch_size,
            device=_device(cfg.device),
            activation="sigmoid" if output == "regions" else "softmax",
            uncertainty=cfg.uncertainty,
            amp=cfg.amp,
        )
        meta = pre.meta
        labels = probabilities_to_labels(probs, output, case.et_label, cfg.threshold)
        affine, header = meta.affine_array(), meta.header()
        if cfg.save_probabilities:
            restored = restore_to_source(probs, meta)
            if output == "labels":  # outside the crop box is background with certainty
                restored[0] = restore_to_source(probs[0], meta, fill=1.0)
            _write_map(paths["prob"], restored, affine, header, cfg.prob_dtype)
        if std is not None:
            _write_map(paths["std"], restore_to_source(std, meta), affine, header, cfg.prob_dtype)
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


def _write_map(path: Path, values: np.ndarray, affine, header, dtype: str) -> None:
    """``(C, X, Y, Z)`` values in [0, 1] → a 4-D NIfTI ``(X, Y, Z, C)`` (channels last)."""
    values = np.moveaxis(values, 0, -1)
    if dtype == "uint8":
        q = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
        write_nifti(path, q, affine, header, slope=1.0 / 255.0)
    else:
        write_nifti(path, values.astype(np.float32), affine, header)


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

    from bratslab.cluster import ensure_ray

    ensure_ray()
    # Wrapped in a list so Ray passes the ref itself to the actor rather than resolving it
    # on the driver for every actor's constructor.
    payloads_ref = [ray.put(payloads)]
    limit = min(cfg.workers or len(cases), len(cases))
    gpus = 0.0
    if cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0:
        gpus = 1.0  # Ray hides GPUs from workers that did not ask for one
    rows = [{"case": json.dumps(c.to_dict())} for c in cases]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        CasePredictor,
        fn_constructor_kwargs={
            "payloads_ref": payloads_ref,
            "cfg": cfg.model_dump(),
            "out_dir": str(out_dir),
        },
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=limit),
        num_cpus=cfg.threads,
        num_gpus=gpus,
        # Ray Data restarts a crashed actor and retries its case (its defaults); an error in a
        # case is caught by predict_case and comes back as a "failed" row instead.
    )
    yield from ds.iter_rows()


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
    Failures are listed in ``out_dir/failures.json`` (case, file, reason).
    """
    from bratslab.data.layout import discover_cases

    cfg = cfg or PredictConfig()
    t0 = time.perf_counter()
    refs = [model_refs] if isinstance(model_refs, (str, Path)) else list(model_refs)
    payloads = [load_payload(r) for r in refs]
    check_ensemble(payloads)
    cases = discover_cases(raw_dir)
    if not cases:
        raise FileNotFoundError(f"{raw_dir}: no BraTS cases found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)

    report = PredictReport()
    todo = []
    for c in cases:
        if c.problems:  # found by discovery: missing/duplicate modality
            file, reason = c.problems[0]
            report.failures.append({"case": c.id, "file": file, "reason": reason})
        elif not cfg.overwrite and _is_done(c, out_dir, cfg):
            report.skipped.append(c.id)
        else:
            todo.append(c)

    if todo:
        from bratslab.evaluate.report import progress_bar

        with progress_bar(progress, len(todo), "predict") as advance:
            for result in _predict_with_ray_data(todo, payloads, cfg, out_dir):
                if result["status"] == "written":
                    report.written.append(result["case"])
                else:
                    report.failures.append({k: result[k] for k in ("case", "file", "reason")})
                ok = "ok" if result["status"] == "written" else "FAILED"
                advance(f"predict {result['case']} {ok}")
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
