"""The MLflow "model from code" that wraps a bratslab model directory.

Logged by :func:`bratslab.tracking.model_store.log_model_dir` as ``python_model=<this file>``,
so nothing is pickled: MLflow stores this source file plus the weights-only model directory
(``model.pt`` state dict + ``model.json`` config) as the model's artifacts. Loading rebuilds the
architecture from ``model.json`` and loads the state dict with ``torch.load(weights_only=True)``.

Why not ``mlflow.pytorch.log_model``: in MLflow 3 it exports a traced ``pt2`` program that needs
an input example and specialises on its shape; BraTS volumes vary in size after cropping, and a
sliding-window predictor over an ``nn.Module`` rebuilt from config serves them all.

An ensemble version (``bratslab models register --ensemble``: ``ensemble.json`` + one model
directory per member) loads every member the way ``bratslab predict`` does
(:func:`bratslab.inference.model_loading.load_member_models`, weights-only) and predicts with
``predict``'s own inference (:func:`bratslab.inference.sliding_window.predict_probabilities`), so
the members' probabilities are averaged by the same code, not a copy of it. MLflow's part (the
pyfunc base class, ``set_model``) comes from :mod:`bratslab.tracking.model_from_code`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bratslab.inference.model_loading import load_member_models
from bratslab.tracking.manifest import verify_local_dir
from bratslab.tracking.model_folder import is_ensemble_dir
from bratslab.tracking.model_from_code import PythonModel, set_model


class BratsSegmenter(PythonModel):
    """``predict(x)``: ``x`` float32 ``(C_in, X, Y, Z)`` or a batch ``(B, C_in, X, Y, Z)``
    (store space) → probabilities ``(C_out, X, Y, Z)`` (resp. ``(B, C_out, X, Y, Z)``) float32
    (sigmoid regions WT/TC/ET or softmax labels), by sliding-window inference with the
    training patch size.

    A single model blends its windows' logits (overlap 0.5, constant weights). An ensemble
    averages its members' probabilities per window and blends them with Gaussian weights
    (overlap 0.5, no test-time augmentation, float32): ``bratslab predict --tta none --no-amp``
    on the preprocessed volume."""

    def load_context(self, context) -> None:
        from bratslab.models.weights import load_model_dir

        model_dir = context.artifacts["model_dir"]
        verify_local_dir(Path(model_dir))  # the SHA256SUMS logged with it (log_model_dir)
        self.members = None  # an ensemble's networks, averaged by predict's inference
        if is_ensemble_dir(model_dir):
            self.members, self.info = load_member_models(model_dir)
            return
        self.model, self.info = load_model_dir(model_dir)
        self.model.eval()

    def predict(self, context, model_input, params=None):
        if self.members is not None:
            return self._predict_ensemble(model_input)
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

    def _predict_ensemble(self, model_input) -> np.ndarray:
        """The members' mean probabilities, one volume at a time (``predict``'s inference)."""
        from bratslab.inference.sliding_window import predict_probabilities

        x = np.asarray(model_input, dtype=np.float32)
        output = self.info["model"].get("output", "regions")
        volumes = [
            predict_probabilities(
                self.members,
                volume,
                roi_size=[int(s) for s in self.info["patch_size"]],
                overlap=0.5,
                tta="none",
                sw_batch_size=2,
                activation="sigmoid" if output == "regions" else "softmax",
                amp=False,  # float32, as the single model runs
            )[0]
            for volume in (x[None] if x.ndim == 4 else x)
        ]
        return volumes[0] if x.ndim == 4 else np.stack(volumes)


set_model(BratsSegmenter())
