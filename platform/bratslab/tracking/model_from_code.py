"""What an MLflow *model from code* needs from MLflow, so that the model's own source (which
runs networks, :mod:`bratslab.inference.pyfunc_model`) imports no MLflow itself: the pyfunc base
class and the call that names the file's model.
"""

from __future__ import annotations

import warnings

import mlflow

#: The base class of a pyfunc model: ``load_context(context)`` and ``predict(context, input)``.
PythonModel = mlflow.pyfunc.PythonModel


def set_model(model: PythonModel) -> None:
    """Name ``model`` as the model of the file MLflow is loading (models from code)."""
    with warnings.catch_warnings():
        # MLflow nags about missing type hints; volumes are validated by the model itself.
        warnings.simplefilter("ignore", UserWarning)
        mlflow.models.set_model(model)
