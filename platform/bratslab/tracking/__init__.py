"""Tracking: everything MLflow (layer 2; imports no stage above it, and no module outside
``tracking/`` and ``compat/`` imports mlflow).

- :mod:`~bratslab.tracking.mlflow_runs`: runs, metrics, artifacts, tracking URIs.
- :mod:`~bratslab.tracking.model_folder`: a model folder on disk (model directory or ensemble)
  and its files' sha256 checks; :mod:`~bratslab.tracking.manifest`: ``SHA256SUMS`` in one.
- :mod:`~bratslab.tracking.model_store`: log a model folder, fetch one back from any reference;
  :mod:`~bratslab.tracking.logged_hashes`: the hashes a logged model was logged with;
  :mod:`~bratslab.tracking.model_from_code`: MLflow's part of the served pyfunc model.
- :mod:`~bratslab.tracking.registry`: the model registry, one name for
  :mod:`~bratslab.tracking.model_versions` (read), :mod:`~bratslab.tracking.registration`,
  :mod:`~bratslab.tracking.ensemble_registration` and :mod:`~bratslab.tracking.promotion`
  (guarded by :mod:`~bratslab.tracking.alias_guard`).
- :mod:`~bratslab.tracking.postprocess_store`: post-processing thresholds on a version;
  :mod:`~bratslab.tracking.download`: a version into a verified local folder.
- :mod:`~bratslab.tracking.browse`, :mod:`~bratslab.tracking.ui`,
  :mod:`~bratslab.tracking.driver`, :mod:`~bratslab.tracking.config`: listing runs, the MLflow
  UI, the driver's liveness, the stage's config.
"""
