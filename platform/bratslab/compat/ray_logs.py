"""Private Ray core API: where a driver prints its workers' output (checked against ray 2.60.x).

With ``ray.init(log_to_driver=True)`` a driver thread polls the stdout/stderr lines of every
worker and actor of the job and hands each batch (a dict: ``pid``, ``actor_name``,
``task_name``, ``is_err``, ``lines``...) to the handlers of
``ray._private.ray_logging.global_worker_stdstream_dispatcher``, where ``ray.init`` registers
``print_to_stdstream`` under the name ``"ray_print_logs"`` (prefix, colour, deduplicate, print).
The messages the GCS publishes for the job (the raylet's warnings, actor deaths) are printed by
calling ``ray._private.worker.print_to_stdstream`` directly.

Public replacement: ``log_to_driver=False``, which keeps the lines from the driver altogether,
so an actor could no longer show a line on the console (the epoch line); there is no public
hook that receives the lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RAY_HANDLER = "ray_print_logs"
BRATSLAB_HANDLER = "bratslab_route_logs"


def route_worker_output(handle: Callable[[dict[str, Any]], None]) -> bool:
    """Give every batch of worker output, and every message published for the job, to
    ``handle`` instead of Ray's printing. Call after each ``ray.init`` (which registers Ray's
    handler again). Returns False, changing nothing, where Ray's internals differ."""
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not (
        callable(getattr(worker, "print_to_stdstream", None))
        and hasattr(dispatcher, "add_handler")
        and hasattr(dispatcher, "remove_handler")
    ):
        return False

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        handle(data)

    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.remove_handler(BRATSLAB_HANDLER)
    dispatcher.add_handler(BRATSLAB_HANDLER, handle)
    worker.print_to_stdstream = print_to_stdstream
    return True
