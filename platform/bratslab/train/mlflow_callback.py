"""The Train controller's MLflow callback: rank 0's reported metrics, one ``log_batch`` per epoch.

Imports Ray at module level (it subclasses ``ray.train.UserCallback``): the driver imports it
only when it builds a trainer (:func:`bratslab.train.trainer.build_trainer`).
"""

from __future__ import annotations

import logging
from typing import Any

import ray.train  # Ray

from bratslab.tracking import mlflow_runs
from bratslab.train.logged_metrics import (
    LOGGED_EVERY_EPOCH,
    NODE_IP_KEY,
    WORKER_NODES_TAG,
    logged_on_validation,
)

log = logging.getLogger(__name__)


class MLflowCallback(ray.train.UserCallback):
    """Runs in the Train controller (pinned to the driver's node by Ray 2.60) and logs
    rank 0's reported metrics to MLflow, one step and one ``log_batch`` per epoch.

    With ``warm``, the process that unpickles it (the controller, while it starts and
    before it starts any worker) imports MLflow and opens the store there and then."""

    def __init__(self, run_id: str, uri: str, warm: bool = True) -> None:
        self.run_id = run_id
        self.uri = uri
        self.warm = warm
        self.nodes_tagged = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.warm:
            try:
                mlflow_runs.client(self.uri)  # import + schema check, cached per process
            except Exception as e:  # the first report retries and raises it properly
                log.warning("MLflow store %s not ready at controller start: %s", self.uri, e)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        tags = None
        if not self.nodes_tagged:  # once per attempt: where each rank runs, in rank order
            nodes = ",".join(f"{i}={w.get(NODE_IP_KEY, '?')}" for i, w in enumerate(metrics))
            tags = {WORKER_NODES_TAG: nodes}
            self.nodes_tagged = True
        m = metrics[0]
        keys = [k for k in m if k in LOGGED_EVERY_EPOCH or k.startswith("lr/")]
        if m.get("val/fresh"):
            keys += [k for k in m if logged_on_validation(k)]
        values = {k: m[k] for k in keys}
        mlflow_runs.log_metrics(self.run_id, values, int(m["epoch"]), self.uri, tags=tags)
