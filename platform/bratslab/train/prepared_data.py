"""The driver's side of a job's data: case rows of the fold, patch size, model.json extras, and
the ``train`` dataset Ray Train shards over the workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bratslab.config import ConfigError
from bratslab.data.loader import case_dataset, case_rows
from bratslab.data.patch_stream import patch_dataset
from bratslab.data.region_set import region_set
from bratslab.data.remote import rows_to_uris
from bratslab.data.store import Store
from bratslab.evaluate.panoptica_metric import MissingExtraError, check_installed
from bratslab.models.zoo import shape_factor

if TYPE_CHECKING:  # the spec is injected: train/ never imports the jobs layer at run time
    from bratslab.jobs.spec import JobSpec

log = logging.getLogger(__name__)

DEFAULT_OUT_CHANNELS = 3  # ModelConfig's default: adapted to the store's profile


def outputs_for_store(spec: JobSpec) -> JobSpec:
    """``spec`` with ``model.out_channels`` fitted to the store's profile: one channel per
    region its region models output (3 for BraTS 2021/2023, 4 with post-treatment glioma's RC)
    or per store label for ``output: labels``. The default (3) adapts; any other value must
    match.

    Raises:
        ConfigError: ``model.out_channels`` was set to a value the store's profile cannot use,
            or ``training.val_lesionwise`` is panoptica and the extra is not installed.
    """
    if spec.training.val_lesionwise == "panoptica":
        try:
            check_installed()
        except MissingExtraError as e:
            raise ConfigError(f"training.val_lesionwise panoptica: {e}") from None
    rs = region_set(Store(spec.data.store_path()).profile)
    want, have = rs.channels(spec.model.output), spec.model.out_channels
    if have == want:
        return spec
    if have != DEFAULT_OUT_CHANNELS:
        raise ConfigError(
            f"model.out_channels is {have}, but the store {spec.data.store} holds profile "
            f"{rs.profile}: an output={spec.model.output} model has "
            f"{rs.describe(spec.model.output)}; set model.out_channels: {want} (or leave it out)"
        )
    log.info("%s: the model outputs %s", rs.profile, rs.describe(spec.model.output))
    model = spec.model.model_copy(update={"out_channels": want})
    return spec.model_copy(update={"model": model})


@dataclass
class PreparedData:
    """Driver-side facts about the data, computed once per job."""

    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    patch_size: list[int]
    model_extra: dict[str, Any]


def prepare_data(spec: JobSpec) -> PreparedData:
    """Read the store's manifest: case rows for the fold, patch size, model.json extras.

    An ``s3://`` store is synced into this node's cache first (``DataSection.store_path``) and
    its rows name objects (``s3://.../{id}_x.npy``): each worker maps them onto its own node's
    copy (:func:`bratslab.data.remote.localize_rows`)."""
    store = Store(spec.data.store_path())
    patch = list(spec.training.patch_size or store.patch_size or [])
    if not patch:
        raise ValueError(f"{store.path}: no patch_size in the store; set training.patch_size")
    factor = shape_factor(spec.model.model_config_only())
    if any(p % factor for p in patch):
        raise ValueError(
            f"training.patch_size {patch}: every size must be a multiple of {factor} "
            f"(2**levels of the {spec.model.arch} model)"
        )
    uri = spec.data.store
    train_rows = rows_to_uris(case_rows(store, spec.data.fold, "train"), store.path, uri)
    val_rows = rows_to_uris(case_rows(store, spec.data.fold, "val"), store.path, uri)
    if spec.data.max_val_cases:
        val_rows = val_rows[: spec.data.max_val_cases]
    rs = region_set(store.profile)
    if spec.model.out_channels != rs.channels(spec.model.output):  # outputs_for_store fits it
        raise ValueError(
            f"model.out_channels {spec.model.out_channels}: profile {rs.profile} of "
            f"{store.path} needs {rs.describe(spec.model.output)}"
        )
    extra = {
        "preprocessing": store.manifest["preprocessing"],
        "patch_size": patch,
        "store_fingerprint_hash": store.fingerprint_hash,
        "channels": store.channels[: spec.model.in_channels],
        "output": spec.model.output,
        "regions": list(rs.outputs),  # what each output channel of a region model is
        "profile": rs.profile,  # the label convention predict writes and evaluation scores
        "job": spec.name,
    }
    return PreparedData(train_rows, val_rows, patch, extra)


def train_dataset(spec: JobSpec, data: PreparedData):
    """The ``train`` dataset Ray Train splits across the workers (``streaming_split``): the
    patch stream of :mod:`bratslab.data.patch_pipeline` (``data.loader: ray``; an actor pool
    samples them), or, for ``thread`` with :data:`CASE_TABLE_IN_CONFIG` off, the case table
    (each worker samples its own patches)."""
    if spec.data.loader == "thread":
        return case_dataset(data.train_rows)

    tr, sc = spec.training, spec.scaling
    _check_loader_cpus(spec)
    return patch_dataset(
        data.train_rows,
        spec.data,
        patch_size=data.patch_size,
        in_channels=spec.model.model_config_only().in_channels,
        seed=tr.seed,
        epochs=tr.epochs,
        steps_per_epoch=tr.steps_per_epoch,
        batch_size=tr.batch_size,
        num_workers=sc.num_workers,
    )


def _check_loader_cpus(spec: JobSpec) -> None:
    """Warn when the cluster has fewer CPUs than the workers and the loader actors together
    (an autoscaling cluster may still add them; a fixed one would wait forever)."""
    import ray  # Ray

    sc = spec.scaling
    need = sc.num_workers * (sc.cpus_per_worker + spec.data.loader_cpus)
    have = ray.cluster_resources().get("CPU", 0.0)  # Ray
    if have < need:
        log.warning(
            "data.loader ray: %d workers x (%g scaling.cpus_per_worker + %g data.loader_cpus) "
            "= %g CPUs, but the Ray cluster has %g; the patch actors may wait for CPUs",
            sc.num_workers,
            sc.cpus_per_worker,
            spec.data.loader_cpus,
            need,
            have,
        )
