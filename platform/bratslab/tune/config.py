"""The ``sweep`` section of a job spec (owned by the tune stage).

Importable without Ray or Optuna: the job spec (``bratslab.jobs.spec``) embeds
:class:`SweepConfig`, and validating a job file must stay cheap.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel
from bratslab.names import NAME_PATTERN


class SchedulerConfig(StrictModel):
    """Trial scheduler: ASHA stops poor trials early; FIFO runs every trial to the end."""

    kind: Literal["asha", "fifo"] = Field(
        default="asha", description="`asha` (asynchronous successive halving) or `fifo`."
    )
    time_attr: str = Field(
        default="training_iteration",
        description="Result key that measures progress; `training_iteration` counts reports "
        "(one per epoch with the bratslab trainer).",
    )
    grace_period: int = Field(
        default=1, ge=1, description="ASHA: progress units every trial gets before it may stop."
    )
    reduction_factor: float = Field(
        default=2.0, gt=1.0, description="ASHA: keep the top 1/reduction_factor at each rung."
    )
    max_t: int | None = Field(
        default=None,
        ge=1,
        description="ASHA: progress units at which every trial stops; default = the job's "
        "number of epochs.",
    )

    @model_validator(mode="after")
    def _grace_within_max(self) -> SchedulerConfig:
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) exceeds max_t ({self.max_t})")
        return self


class SearchConfig(StrictModel):
    """Sampler of the Optuna study that proposes trial configurations."""

    algorithm: Literal["tpe", "random"] = Field(
        default="tpe", description="`tpe` (Optuna TPESampler) or `random` (RandomSampler)."
    )
    seed: int = Field(default=0, description="Sampler seed (reproducible proposals).")
    n_startup_trials: int = Field(
        default=4,
        ge=0,
        description="TPE: trials sampled at random before the model-based proposals start.",
    )
    constant_liar: bool = Field(
        default=True,
        description="TPE: treat running trials as bad so concurrent proposals spread out.",
    )
    initial_points: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Trials to run first, each a (partial) {dotted parameter: value} mapping; "
        "parameters left out are sampled. E.g. one point per architecture so a short sweep "
        "tries each of them.",
    )


class TrialResources(StrictModel):
    """Resources held by each trial's driver (its Train workers use the job's `scaling`)."""

    cpu: float = Field(default=1.0, ge=0, description="Logical CPUs for the trial driver.")
    gpu: float = Field(default=0.0, ge=0, description="GPUs for the trial driver (usually 0).")


class UpKernConfig(StrictModel):
    """Optional follow-up: UpKern the best small-kernel MedNeXt and finetune it as one trial."""

    enabled: bool = Field(default=False, description="Run the follow-up stage.")
    from_kernel: int = Field(default=3, ge=1, description="Kernel size of the source trial.")
    to_kernel: int = Field(default=5, ge=3, description="Kernel size of the finetuned model.")
    overrides: list[str] = Field(
        default_factory=list,
        description="Extra dotted `key=value` overrides for the finetune (e.g. fewer epochs).",
    )

    @model_validator(mode="after")
    def _grow(self) -> UpKernConfig:
        if self.to_kernel <= self.from_kernel or self.to_kernel % 2 == 0:
            raise ValueError("to_kernel must be odd and larger than from_kernel")
        return self


class SweepConfig(StrictModel):
    """How a sweep runs: the search space file, trial budget, scheduler, search and selection."""

    space: str = Field(description="Path of a search_spaces/*.yaml file.")
    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Sweep name (folder under $BRATSLAB_HOME/sweeps); default: job name + time.",
    )
    num_trials: int = Field(default=4, ge=1, description="Number of trials to sample.")
    max_concurrent: int = Field(default=2, ge=1, description="Trials running at once.")
    metric: str = Field(default="val/dice_mean", description="Metric reported by each trial.")
    mode: str = Field(default="max", pattern="^(max|min)$", description="Optimise up or down.")
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="Early stopping of poor trials."
    )
    search: SearchConfig = Field(
        default_factory=SearchConfig, description="How trial configurations are proposed."
    )
    resources: TrialResources = Field(
        default_factory=TrialResources, description="Resources of each trial's driver."
    )
    top_k: int = Field(
        default=2, ge=1, description="Best trials re-evaluated with test-time augmentation."
    )
    tta: Literal["none", "flips", "flips+rot90"] = Field(
        default="flips", description="Test-time augmentation of the top-k re-evaluation."
    )
    selection_metric: str = Field(
        default="tta/dice_mean",
        description="Metric (after TTA) that picks the winner and decides the champion alias.",
    )
    selection_mode: str = Field(
        default="max",
        pattern="^(max|min)$",
        description="Whether the selection metric is maximised.",
    )
    register_model: bool = Field(default=True, description="Log and register the winner in MLflow.")
    registry_name: str | None = Field(
        default=None,
        description="Registered model name of the winner; default: the job's "
        "`tracking.experiment` unless it is the generic `bratslab`, else the job `name` "
        "(characters other than letters, digits, `_`, `.`, `-` become `-`).",
    )
    alias: str = Field(
        default="champion", description="Alias moved to the winner when it beats the holder."
    )
    upkern: UpKernConfig = Field(
        default_factory=UpKernConfig, description="Optional UpKern follow-up trial."
    )
    max_failures: int = Field(
        default=0, ge=0, description="Retries of a trial that raised (0 = none)."
    )

    @field_validator("registry_name")
    @classmethod
    def _usable_model_name(cls, v: str | None) -> str | None:
        # MLflow rejects "/" and ":"; "@" would split a models:/NAME@alias URI. Checked here so
        # a bad name fails before the sweep trains, not when its winner is registered.
        if v is not None and (not v.strip() or any(c in v for c in "/:@")):
            raise ValueError(f"{v!r} is not a registered-model name (no '/', ':' or '@')")
        return v
