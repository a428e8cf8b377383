"""The MLflow "model from code" that wraps a bratslab model directory.

Logged by :func:`bratslab.tracking.model_store.log_model_dir` as ``python_model=<this file>``,
so nothing is pickled: MLflow stores this source file plus the weights-only model directory
(``model.pt`` state dict + ``model.json`` config) as the model's artifacts. Loading rebuilds the
architecture from ``model.json`` and loads the state dict with ``torch.load(weights_only=True)``.

Why not ``mlflow.pytorch.log_model``: in MLflow 3 it exports a traced ``pt2`` program that needs
an input example and specialises on its shape; BraTS volumes vary in size after cropping, and a
sliding-window predictor over an ``nn.Module`` rebuilt from config serves them all.
"""

from __future__ import annotations

import warnings

import mlflow
import numpy as np


class BratsSegmenter(mlflow.pyfunc.PythonModel):
    """``predict(x)``: ``x`` float32 ``(C_in, X, Y, Z)`` (store space) → probabilities
    ``(C_out, X, Y, Z)`` float32 (sigmoid regions WT/TC/ET or softmax labels), by sliding-window
    inference with the training patch size."""

    def load_context(self, context) -> None:
        from bratslab.models.weights import load_model_dir

        self.model, self.info = load_model_dir(context.artifacts["model_dir"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import torch
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim == 4:
            x = x[None]
        roi = tuple(self.info.get("patch_size") or x.shape[2:])
        with torch.inference_mode():
            logits = sliding_window_inference(x, roi, 2, self.model, overlap=0.5)
        if self.info.get("model", {}).get("output", "regions") == "labels":
            probs = torch.softmax(logits, 1)
        else:
            probs = torch.sigmoid(logits)
        out = probs.float().numpy()
        return out[0] if np.asarray(model_input).ndim == 4 else out


with warnings.catch_warnings():
    # MLflow nags about missing type hints; volumes are validated by the model itself.
    warnings.simplefilter("ignore", UserWarning)
    mlflow.models.set_model(BratsSegmenter())
