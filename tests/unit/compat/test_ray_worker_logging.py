"""`bratslab.compat.ray_worker_logging`: Ray Train's placement-group cleaner still logs its
State API warning through the logger the filter is attached to, and the filter passes the first
warning and drops its repeats. None of these tests starts Ray."""

from __future__ import annotations

import importlib
import inspect
import logging

import pytest

from bratslab.compat import ray_worker_logging as compat


def test_the_cleaner_logs_the_warning_through_the_named_logger():
    module = importlib.import_module(compat.LOGGER)  # the logger is named after its module
    assert module.logger.name == compat.LOGGER
    assert compat.MESSAGE in inspect.getsource(module.PlacementGroupCleaner._monitor_loop)


def test_the_hook_is_importable_by_the_name_the_runtime_env_gives():
    path = compat.runtime_env_hook()["worker_process_setup_hook"]
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is compat.setup_worker


@pytest.fixture
def cleaner_logger():
    logger = logging.getLogger(compat.LOGGER)
    saved = list(logger.filters)
    yield logger
    logger.filters[:] = saved


def test_first_warning_passes_and_repeats_are_dropped(cleaner_logger, caplog):
    compat.setup_worker()
    compat.setup_worker()  # a second call adds no second filter
    assert sum(isinstance(f, compat._FirstOnly) for f in cleaner_logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=compat.LOGGER):
        for _ in range(5):
            cleaner_logger.warning(compat.MESSAGE + ". State API may be temporarily unavailable.")
        cleaner_logger.warning("Detected that the Ray Train controller actor (x) is dead.")
    messages = [r.getMessage() for r in caplog.records]
    assert sum(compat.MESSAGE in m for m in messages) == 1
    assert any("is dead" in m for m in messages)  # other warnings of the cleaner still pass
