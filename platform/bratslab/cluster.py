"""Connecting to Ray: a local instance bound to loopback by default, a cluster when told.

The only helper that calls ``ray.init``; every Ray-using stage goes through :func:`ensure_ray`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from bratslab.compat.ray_core import (
    bind_single_machine_to_loopback,
    remove_job_placement_groups,
    start_local_ray,
)
from bratslab.console import adopt_library_loggers, route_ray_output
from bratslab.settings import Settings, get_settings, store_env
from bratslab.shutdown import abandoned_calls

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Ray's session folders hold Unix sockets, whose paths must stay under 107 bytes: the embedded
# instance's temp folder is a short one under /tmp, not a folder under BRATSLAB_HOME.
TEMP_ROOT = Path("/tmp")
# Run in every worker of the job as it starts (a ``worker_process_setup_hook``).
WORKER_SETUP_HOOK = "bratslab.cluster.pin_worker_address"
PREEMPTION_WATCHER_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"

log = logging.getLogger(__name__)

_EMBEDDED: dict[str, str] = {}  # "temp_dir" once this process started its own local instance


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
    runtime_env = _runtime_env(settings)
    if settings.ray_address:
        log.info("joining Ray cluster at %s", settings.ray_address)
        # Inside a submitted Ray job the job's runtime env already applies (and Ray refuses a
        # second, different one), so only a standalone driver brings its own.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        # A cluster's workers pin their own GCS too (another Ray on one of its hosts).
        runtime_env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
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
    # Ray Train's preemption watcher (an actor per worker group) polls for nodes being drained
    # by a cluster autoscaler; one machine has none, and its process costs seconds of CPU at
    # every run start. The driver's value reaches the Train controller; users can set it to 1.
    os.environ.setdefault(PREEMPTION_WATCHER_VAR, "0")
    cpus = num_cpus or settings.ray_num_cpus or max(os.cpu_count() or 1, 6)
    # Ray's helpers that look a cluster up ("auto": Ray Train's placement-group cleaner, the
    # State API) find this instance, never another one on the host: see pin_worker_address.
    runtime_env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    temp_dir = None if os.environ.get("RAY_TMPDIR") else str(ray_temp_dir(settings.home))
    context = start_local_ray(
        num_cpus=cpus,
        object_store_memory=object_store_memory,
        temp_dir=temp_dir,
        include_dashboard=False,
        # Even without a dashboard Ray records one at 127.0.0.1:8265, and its State API (which
        # Ray Train's placement-group cleaner polls) would then ask whatever else listens there
        # (another Ray's dashboard) about this instance's actors. A free port of our own: the
        # queries fail fast and nothing of another instance answers them.
        dashboard_port=free_loopback_port(),
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    route_ray_output(context)  # worker lines into the log file (bratslab.console)
    _EMBEDDED["temp_dir"] = temp_dir or ""
    log.info("started local Ray (%d logical CPUs, bound to 127.0.0.1, %s)", cpus, temp_dir)


def _runtime_env(settings: Settings) -> dict[str, Any]:
    """The runtime env every worker, actor and trial gets: the driver's settings, quiet
    telemetry and progress bars, and where s3:// stores live (never the credentials)."""
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
    return {"env_vars": env_vars}


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_temp_dir(home: Path, root: Path = TEMP_ROOT) -> Path:
    """The embedded instance's own Ray temp folder: ``/tmp/bratslab-ray-<uid>-<hash of home>``.

    Two Ray instances sharing ``/tmp/ray`` see each other's session files, and Ray's lookups
    of "the" local cluster then pick either. One folder per user and work folder keeps them
    apart. It is created 0700, but Ray opens every folder it uses to all users (0777) as it
    does ``/tmp/ray``; one that another user owns (or a link planted there) is refused.

    Raises:
        RuntimeError: the folder exists but is not a directory of this user.
    """
    digest = hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:12]
    folder = root / f"bratslab-ray-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"{folder}: Ray temp folder not owned by this user; remove it")
    return folder


def pin_worker_address() -> None:
    """Worker start-up hook: ``RAY_ADDRESS`` = the GCS this worker belongs to.

    Ray code inside workers that looks a cluster up without an address (Ray Train's
    placement-group cleaner through the State API) otherwise scans the host's processes and
    ``/tmp/ray`` and may attach to another Ray instance there. Only the job's workers get it:
    the driver's own environment is left alone, so processes it starts do not join.
    """
    try:
        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception as e:  # noqa: BLE001 - a failing hook would stop the worker
        log.warning("could not pin RAY_ADDRESS in worker %d: %s", os.getpid(), e)


def _kill_embedded_workers(wait_s: float = 10.0) -> None:
    """SIGKILL the embedded instance's worker processes (their process title starts with
    ``ray::``: ``ray::TrainController.run``, ``ray::IDLE``), and wait for them: what the
    daemons' own shutdown would end. The daemons and their agents (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) stay: the raylet exits when an agent dies, and the driver's core
    worker then ends the process with status 1."""
    import psutil  # noqa: I001 - with Ray

    def is_worker(p: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error, IndexError):
            title = p.cmdline()[0]
            return title.startswith("ray::") and not title.endswith("Agent")
        return False

    workers = [p for p in psutil.Process().children(recursive=True) if is_worker(p)]
    for p in workers:
        with contextlib.suppress(psutil.Error):  # gone already
            p.kill()
    psutil.wait_procs(workers, timeout=wait_s)


def stop_driver() -> None:
    """A stopping driver (SIGTERM, SIGINT) hands back what its job holds, then leaves Ray.

    The job's trial actors, Train controllers and workers end with the driver; on a cluster its
    placement groups are removed explicitly first, because one a controller was creating as the
    signal arrived can otherwise outlive the job and hold its CPUs (the embedded instance stops
    altogether). Checkpoints already persisted stay.

    While an interrupted blocking call still runs inside Ray (:func:`bratslab.shutdown.leave`)
    the driver neither disconnects nor stops the embedded instance's daemons (its core worker
    would exit with status 1 as its raylet went): the workers those daemons started (the Train
    controller and workers, trial actors) are killed, so that no epoch is logged or checkpoint
    registered after the run was marked KILLED, and the process is expected to end through
    ``leave``; the daemons end with it (Ray starts them fate-sharing with the driver).
    """
    import ray

    if not ray.is_initialized():
        return
    if abandoned_calls():
        embedded = bool(_EMBEDDED)
        _EMBEDDED.clear()
        if embedded:
            _kill_embedded_workers()
        else:
            remove_job_placement_groups()
        return
    try:
        # The embedded instance ends with this driver, its groups with it: asking its GCS
        # first only delays the exit (up to a minute when the signal stopped the GCS too).
        removed = 0 if _EMBEDDED else remove_job_placement_groups()
        if removed:
            log.info("removed %d placement group(s) of the stopped job", removed)
    finally:
        _EMBEDDED.clear()
        ray.shutdown()
