"""The tracking stage's config: the job spec's ``tracking`` section (no mlflow import here)."""

from __future__ import annotations

from pydantic import Field

from bratslab.config import StrictModel


class TrackingSection(StrictModel):
    """Where the run is recorded in MLflow."""

    experiment: str = Field(default="bratslab", description="MLflow experiment name.")
    parent_run_id: str | None = Field(
        default=None, description="Nest the run under this MLflow run (a sweep's parent)."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")
    log_model: bool = Field(
        default=True, description="Log the best checkpoint as an MLflow model at the end."
    )
