"""Connecting to Ray: a local instance bound to loopback by default, a cluster when told.

The only helper that calls ``ray.init``; every Ray-using stage goes through :func:`ensure_ray`.
"""

from __future__ import annotations

import logging
import os

from bratslab.compat.ray_core import bind_single_machine_to_loopback
from bratslab.console import adopt_library_loggers, route_ray_output
from bratslab.settings import Settings, get_settings, store_env

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

log = logging.getLogger(__name__)


def ensure_ray(
    settings: Settings | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> None:
    """Initialise Ray once per process.

    With ``RAY_ADDRESS`` (or ``settings.ray_address``) set, joins that cluster. Otherwise starts a
    local instance that listens on 127.0.0.1 only, with no dashboard, and with ``num_cpus``
    *logical* CPUs: on a 2-core machine a Tune trial's driver and its Train workers each hold a
    CPU slot, so the default is max(physical, 6) or ``$BRATSLAB_RAY_CPUS``.
    """
    import ray

    if ray.is_initialized():
        return
    adopt_library_loggers()  # Ray's import installed a stderr handler (bratslab.console)
    settings = settings or get_settings()
    env_vars = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        # ``data.loader: ray`` streams patches and predict maps cases through Ray Data; its
        # per-dataset progress bars would bury the training output. Users can set it to 0.
        "RAY_DATA_DISABLE_PROGRESS_BARS": os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
    }
    os.environ.setdefault(
        "RAY_DATA_DISABLE_PROGRESS_BARS", env_vars["RAY_DATA_DISABLE_PROGRESS_BARS"]
    )
    # Every worker, actor and trial resolves the driver's settings, not its own working folder's.
    env_vars.update(settings.env())
    # Where an s3:// store lives and is cached on each node; never the credentials, which Ray's
    # runtime env would show to anyone who can see the job: nodes get those from their own
    # environment (a KubeRay Secret, an instance role).
    env_vars.update({k: v for k, v in store_env(settings).items() if k not in SECRET_VARS})
    runtime_env = {"env_vars": env_vars}
    if settings.ray_address:
        log.info("joining Ray cluster at %s", settings.ray_address)
        # Inside a submitted Ray job the job's runtime env already applies (and Ray refuses a
        # second, different one), so only a standalone driver brings its own.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        context = ray.init(
            address=settings.ray_address,
            runtime_env=None if in_job else runtime_env,
            log_to_driver=True,
        )
        route_ray_output(context)  # worker lines into the log file (bratslab.console)
        return
    # Single-machine mode: Ray then resolves the node address to loopback instead of the
    # machine's external interface, so no port of the embedded instance is reachable from outside.
    bind_single_machine_to_loopback()
    cpus = num_cpus or settings.ray_num_cpus or max(os.cpu_count() or 1, 6)
    context = ray.init(
        address="local",
        num_cpus=cpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    route_ray_output(context)
    log.info("started local Ray (%d logical CPUs, bound to 127.0.0.1)", cpus)


def stop_driver() -> None:
    """A stopping driver (SIGTERM, SIGINT) hands back what its job holds, then leaves Ray.

    The job's trial actors, Train controllers and workers end with the driver; its placement
    groups are removed explicitly first, because one a controller was creating as the signal
    arrived can otherwise outlive the job and hold its CPUs. Checkpoints already persisted stay.
    """
    import ray

    if not ray.is_initialized():
        return
    from bratslab.compat.ray_core import remove_job_placement_groups

    try:
        removed = remove_job_placement_groups()
        if removed:
            log.info("removed %d placement group(s) of the stopped job", removed)
    finally:
        ray.shutdown()
