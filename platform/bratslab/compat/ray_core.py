"""Private Ray core API used by bratslab (checked against ray 2.60.x).

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into
``ray._private.ray_constants.ENABLE_RAY_CLUSTER``. With it off, a single-machine ``ray.init``
resolves the node address to loopback (127.0.0.1) instead of the machine's external interface.
bratslab imports Ray lazily, but something else (a test, a notebook) may have imported it first,
so the constant is set as well as the variable. Public replacement: none; ``ray.init`` has no
"bind to loopback only" argument.
"""

from __future__ import annotations

import os

ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PRESTART_VAR = "RAY_prestart_worker_first_driver"  # the raylet setting, as a variable


def bind_single_machine_to_loopback() -> None:
    """Make the next local ``ray.init`` listen on 127.0.0.1 only (unless the user set ``ENV``)."""
    os.environ.setdefault(ENV, "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[ENV] != "0"


def remove_job_placement_groups() -> int:
    """Remove every placement group of this driver's job that still holds resources.

    Ray removes a job's placement groups after the job ends, but when the driver dies while a
    Train controller is creating one, the group has been seen to outlive the job (and keep its
    CPUs) for minutes. A driver that is stopping calls this before it exits. Private detail: a
    ``PlacementGroupID`` ends with the ``JobID`` of the job that created it (Ray's ID layout);
    public replacement: none (``placement_group_table`` has no job field). Returns how many were
    removed.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for pg_id, row in ray.util.placement_group_table().items():
        if not pg_id.endswith(job) or row.get("state") == "REMOVED":
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed += 1
        except Exception:  # noqa: BLE001 - best effort while stopping; gone already is fine
            continue
    return removed


def worker_exception(error: BaseException) -> BaseException | None:
    """The exception a Ray Train worker's training function raised, if ``error`` carries one.

    Ray Train 2.60 hands a worker's error to the controller (and into
    ``WorkerGroupError.worker_failures``) as ``UserExceptionWithTraceback``, which keeps the
    original exception in ``_base_exc`` and prints as the worker's traceback. Private detail:
    that attribute; public replacement: none. None for errors that are not a user exception
    (a worker process that died, a failed health check).
    """
    return getattr(error, "_base_exc", None)


def start_local_ray(*, temp_dir: str | None, **kwargs):
    """``ray.init(address="local", **kwargs)`` with Ray's temp folder at ``temp_dir`` and no
    prestarted workers; returns its context.

    The raylet prestarts Python workers as the first driver connects, with the default runtime
    env; every bratslab job has its own (settings, the worker setup hook), so none of those
    workers is ever used and each costs a process start of CPU.

    Private details: the ``_temp_dir`` and ``_system_config`` keywords of ``ray.init`` and the
    raylet's ``prestart_worker_first_driver`` setting (checked: ray 2.60.x; its variable
    ``RAY_prestart_worker_first_driver``, when set, is left to decide). Public
    replacements: ``RAY_TMPDIR`` for the whole process, which would also move other Ray
    instances this process might start or join; none for the prestart.
    """
    import ray

    extra = {"_temp_dir": temp_dir} if temp_dir else {}
    if PRESTART_VAR not in os.environ:  # set, Ray's own variable decides
        extra["_system_config"] = {"prestart_worker_first_driver": False}
    return ray.init(address="local", **kwargs, **extra)
