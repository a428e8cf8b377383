"""The MLflow model registry, one name for its parts: register versions, move the ``champion``
alias, look models up.

MLflow 3 registers *logged models* (``models:/<model_id>`` from
:func:`bratslab.tracking.model_store.log_model_dir`, or ``runs:/<run>/<name>``). Stages are
deprecated; a version's role is an alias (``champion``), and ``models:/NAME@champion`` resolves
to whichever version holds it now. Works against the embedded SQLite store and a tracking
server alike (the URI comes from settings or the ``uri`` argument).

- :mod:`~bratslab.tracking.model_versions`: references and lookups (read).
- :mod:`~bratslab.tracking.registration`: a logged model registered as a new version, its
  files' sha256 as version tags.
- :mod:`~bratslab.tracking.ensemble_registration`: several models registered as one version.
- :mod:`~bratslab.tracking.promotion`: moving an alias, by hand or only to a better version,
  safe against concurrent promoters.

Callers use ``registry.<name>``; this module holds no code of its own.
"""

from __future__ import annotations

from bratslab.tracking.alias_guard import AliasRefusedError
from bratslab.tracking.ensemble_registration import (
    CV_FOLDS_TAG,
    CV_RUN_TAG,
    CV_SELECTION,
    KIND_TAG,
    MEMBERS_TAG,
    Member,
    cv_members,
    members_of,
    register_ensemble,
)
from bratslab.tracking.mlflow_runs import client, tracking_uri
from bratslab.tracking.model_versions import (
    CANDIDATE_TAG,
    CHAMPION,
    ModelSummary,
    RegistryError,
    VersionInfo,
    check_model_name,
    get_version,
    list_models,
    list_versions,
    logged_model_of_run,
    model_uri,
    parse_ref,
    source_run_id,
    version_metric,
)
from bratslab.tracking.promotion import (
    CANDIDATE_WINDOW_S,
    PromotionUnsettled,
    promote_if_better,
    set_alias,
)
from bratslab.tracking.registration import register, register_logged_model, source_hashes

__all__ = [
    "CANDIDATE_TAG",
    "CANDIDATE_WINDOW_S",
    "CHAMPION",
    "CV_FOLDS_TAG",
    "CV_RUN_TAG",
    "CV_SELECTION",
    "KIND_TAG",
    "MEMBERS_TAG",
    "AliasRefusedError",
    "Member",
    "ModelSummary",
    "PromotionUnsettled",
    "RegistryError",
    "VersionInfo",
    "check_model_name",
    "client",
    "cv_members",
    "get_version",
    "list_models",
    "list_versions",
    "logged_model_of_run",
    "members_of",
    "model_uri",
    "parse_ref",
    "promote_if_better",
    "register",
    "register_ensemble",
    "register_logged_model",
    "set_alias",
    "source_hashes",
    "source_run_id",
    "tracking_uri",
    "version_metric",
]
