"""The sha256 values a logged model was logged with, and the logged model a run id or a
``runs:/<run_id>/<name>`` URI stands for.

:func:`bratslab.tracking.model_store.log_model_dir` tags every logged model with the sha256 of
each of its files (``bratslab.sha256.*``, as registered versions carry them); these helpers
read them back so that a fetch by ``models:/<model_id>``, ``runs:/...`` or a run id checks the
files as strictly as a fetch of a registered version.
"""

from __future__ import annotations

from bratslab.tracking.model_folder import hash_tags_of


def logged_hashes(model_id: str, *, uri: str | None = None, ref: str = "") -> dict[str, str]:
    """The sha256 tags a logged model was logged with (empty for one logged before they were).

    Raises:
        FileNotFoundError: no such logged model.
    """
    from mlflow.exceptions import MlflowException

    from bratslab.tracking.mlflow_runs import client

    try:
        model = client(uri).get_logged_model(model_id)
    except MlflowException as e:
        raise FileNotFoundError(f"{ref or model_id}: cannot download model: {e.message}") from None
    return hash_tags_of(dict(model.tags or {}))


def logged_model_of_run(run_id: str, uri: str | None) -> str:
    """``models:/<model_id>`` of the newest model run ``run_id`` logged."""
    from bratslab.tracking import model_versions  # (imports mlflow)

    try:
        return model_versions.logged_model_of_run(run_id, uri=uri)
    except model_versions.RegistryError as e:
        raise FileNotFoundError(f"{run_id}: {e}") from None


def logged_model_of_runs_uri(text: str, uri: str | None) -> str | None:
    """The id of the logged model ``runs:/<run_id>/<name>`` names (the newest READY one of that
    name), or None (an artifact folder of the run, not a logged model)."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    from bratslab.tracking.mlflow_runs import client

    run_id, _, name = text.removeprefix("runs:/").partition("/")
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise FileNotFoundError(f"{text}: cannot download model: {e.message}") from None
    found = [
        m
        for m in c.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        if m.name == name.strip("/") and m.status == LoggedModelStatus.READY
    ]
    if not found:
        return None
    return max(found, key=lambda m: m.creation_timestamp or 0).model_id
