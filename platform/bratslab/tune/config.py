"""The ``sweep`` section of a job spec (owned by the tune stage)."""

from __future__ import annotations

from pydantic import Field

from bratslab.config import StrictModel


class SweepConfig(StrictModel):
    """How a sweep runs: the search space file, trial budget and selection metric."""

    space: str = Field(description="Path of a search_spaces/*.yaml file.")
    num_trials: int = Field(default=4, ge=1, description="Number of trials to sample.")
    max_concurrent: int = Field(default=2, ge=1, description="Trials running at once.")
    metric: str = Field(default="val/dice_mean", description="Metric reported by each trial.")
    mode: str = Field(default="max", pattern="^(max|min)$", description="Optimise up or down.")
