"""Ray Train's placement-group cleaner, quieted in Ray's worker processes (checked against
ray 2.60.x).

Every Ray Train run starts a ``PlacementGroupCleaner`` actor that asks Ray's State API once a
second whether the run's controller is still alive. The State API is served by the dashboard,
which a local bratslab instance does not start (``include_dashboard=False``): each query then
fails and the cleaner logs the same warning, "Failed to query Ray Train Controller actor state",
once a second for the whole run, and the driver prints every one of them. Ray 2.60 has no
switch for the cleaner or its interval.

:func:`setup_worker` is Ray's ``worker_process_setup_hook`` (see :func:`runtime_env_hook`): in
each worker it lets the first such warning through and drops its repeats, so a run's output
says once that the cleaner cannot watch its controller. Private detail: the cleaner's logger is
named after its module, ``LOGGER`` below; public replacement: none.
"""

from __future__ import annotations

import logging

LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
MESSAGE = "Failed to query Ray Train Controller actor state"


class _FirstOnly(logging.Filter):
    """Passes the first record that contains ``MESSAGE`` and drops the later ones."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if MESSAGE not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: runs once in every worker process at its start."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, _FirstOnly) for f in logger.filters):
        logger.addFilter(_FirstOnly())


def runtime_env_hook() -> dict[str, str]:
    """The ``runtime_env`` entry that runs :func:`setup_worker` in every worker of a job."""
    return {"worker_process_setup_hook": f"{__name__}.{setup_worker.__name__}"}
