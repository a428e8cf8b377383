"""MLflow's direct prints (checked against mlflow 3.17.x).

Besides its loggers, MLflow prints some messages straight to stderr with
``mlflow.utils.logging_utils.eprint`` ("Successfully registered model ...", "Created version
..."), through a stream that ``mlflow.utils.logging_utils.disable_logging`` switches off. It
also writes "🏃 View run ... at: <url>" to stdout whenever a run ends on a tracking server
(``TrackingServiceClient._log_url``); the public switch for that one is the environment variable
``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``. A quiet bratslab command (:mod:`bratslab.console`)
says the same in its own summary.
"""

from __future__ import annotations

import os
import sys

SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def silence_run_urls() -> None:
    """No "View run ... at" lines on stdout (a user's own setting of the variable wins)."""
    os.environ.setdefault(SUPPRESS_URL_ENV, "true")


def silence_eprint() -> None:
    """Switch MLflow's direct prints off, if MLflow is imported (never imports it)."""
    if "mlflow" not in sys.modules:
        return
    try:
        from mlflow.utils.logging_utils import disable_logging
    except ImportError:
        return
    disable_logging()
