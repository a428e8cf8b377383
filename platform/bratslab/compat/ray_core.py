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


def bind_single_machine_to_loopback() -> None:
    """Make the next local ``ray.init`` listen on 127.0.0.1 only (unless the user set ``ENV``)."""
    os.environ.setdefault(ENV, "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[ENV] != "0"
