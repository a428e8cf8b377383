"""bratslab: distributed experimentation platform for 3-D brain tumour segmentation on Ray."""

import os as _os

# Nothing may phone home: set these before ray or mlflow are imported anywhere in the process.
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "1")

__version__ = "0.1.0"
