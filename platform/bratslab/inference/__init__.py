"""Inference: run trained models on volumes (layer 5, above evaluate and postprocess).

As nnU-Net separates inference from evaluation, this package runs models and
:mod:`bratslab.evaluate` only scores label maps.

- :mod:`~bratslab.inference.sliding_window`: sliding-window inference with test-time
  augmentation and model ensembles, ``(C_in, X, Y, Z)`` → probabilities ``(C_out, X, Y, Z)``.
- :mod:`~bratslab.inference.tta_path`: which TTA path runs on this machine (measured, cached).
- :mod:`~bratslab.inference.model_loading`: read a model or ensemble once, rebuild it in
  workers, pick the torch device.
- :mod:`~bratslab.inference.config`: options of ``bratslab predict`` (:class:`PredictConfig`).
- :mod:`~bratslab.inference.predict`: ``bratslab predict``, a raw BraTS folder → NIfTI
  segmentations in the source geometry.
- :mod:`~bratslab.inference.nifti_out`: prediction outputs as NIfTI files.
- :mod:`~bratslab.inference.model_eval`: ``bratslab evaluate-model``, a model scored on a fold's
  validation cases.
- :mod:`~bratslab.inference.ensemble_comparison`: does an ensemble beat its best member
  (``bratslab models compare-ensemble``).
- :mod:`~bratslab.inference.postprocess_fit`: ``bratslab postprocess fit`` / ``apply`` without
  the command line: predict validation cases, fit thresholds, store them; apply them to a folder.
- :mod:`~bratslab.inference.pyfunc_model`: the MLflow model-from-code that serves a logged model.
"""
