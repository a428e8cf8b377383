"""The Ray Data patch stream of ``data.loader: ray``: case choices → an actor pool of patch makers
(:mod:`bratslab.data.patch_pipeline`; with ``data.augment.on: device`` the sampling-only
:class:`~bratslab.data.device_sampling.DevicePatchMaker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bratslab.data.config import DataSection
from bratslab.data.device_sampling import DevicePatchMaker
from bratslab.data.patch_pipeline import CASE_KEYS, PatchMaker, choose_cases, pool_size


def patch_dataset(
    rows: Sequence[dict[str, Any]],
    data: DataSection,
    *,
    patch_size: Sequence[int],
    in_channels: int,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    num_workers: int,
):
    """The lazy Ray Data stream of :mod:`bratslab.data.patch_pipeline`'s docstring:
    ``epochs * steps_per_epoch * batch_size * num_workers`` patch rows ``{"image", "label"}``
    (numpy tensor columns)."""
    import ray.data  # Ray: the pipeline runs on the cluster's CPUs beside the Train workers

    if not rows:
        raise ValueError("no training cases for the patch pipeline")
    per_epoch = steps_per_epoch * batch_size * num_workers
    actors, cpus = pool_size(data.loader_cpus, num_workers)
    cases = [{k: r[k] for k in CASE_KEYS} for r in rows]
    maker = {
        "patch_size": [int(p) for p in patch_size],
        "in_channels": in_channels,
        "fg_fraction": data.foreground_oversample,
        "augment": data.augment.model_dump(mode="json"),
        "seed": seed,
        "threads": max(1, round(cpus)),
    }
    maker_class = PatchMaker
    if data.augment.on == "device":  # the workers augment; the actors only sample
        maker_class = DevicePatchMaker
    return (
        ray.data.range(epochs * per_epoch, override_num_blocks=epochs)  # Ray
        .map_batches(
            choose_cases,
            fn_kwargs={"cases": cases, "seed": seed, "per_epoch": per_epoch},
            batch_size=None,
            num_cpus=0.1,  # microseconds per draw; must not hold a CPU the actors need
        )
        # Ray (experimental, streaming): one training batch per block, spread over the actors
        .repartition(target_num_rows_per_block=batch_size)
        .map_batches(
            maker_class,
            fn_constructor_kwargs=maker,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),  # Ray: fixed-size pool
            num_cpus=cpus,
        )
    )
