"""MLflow's direct prints (checked against mlflow 3.17.x).

Besides its loggers, MLflow prints some messages straight to stderr with
``mlflow.utils.logging_utils.eprint`` ("Successfully registered model ...", "Created version
..."), through a stream that ``mlflow.utils.logging_utils.disable_logging`` switches off. A quiet
bratslab command (:mod:`bratslab.console`) says the same in its own summary.
"""

from __future__ import annotations

import sys


def silence_eprint() -> None:
    """Switch MLflow's direct prints off, if MLflow is imported (never imports it)."""
    if "mlflow" not in sys.modules:
        return
    try:
        from mlflow.utils.logging_utils import disable_logging
    except ImportError:
        return
    disable_logging()
