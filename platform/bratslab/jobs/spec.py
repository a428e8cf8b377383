"""The job spec: one typed YAML format for training jobs, run locally or submitted to a cluster.

``jobs/*.yaml`` files hold sections ``data``, ``model`` (the zoo's :class:`ModelConfig` plus
``init_from``), ``training``, ``scaling``, ``tracking`` and, for sweeps, ``sweep``. Every section
is a :class:`~bratslab.config.StrictModel`, so an unknown or invalid key fails with a message
that names it (``training.optimizer.lr: Input should be greater than 0``).

Path convention: ``data.store`` may be absolute, ``~``-relative, or relative. A relative store
names the folder of that name in the current directory when it exists there (so ``bratslab data
preprocess raw/ store/`` pairs with ``data.store: store``), otherwise the one under
``$BRATSLAB_HOME`` (the same file submitted to a cluster finds its store in the shared work
folder). :func:`load_job` resolves it once, in the driver, to an absolute path and logs which one
it used; Ray workers and Tune trials, which run in other folders, only ever see that path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from bratslab.config import ConfigError, StrictModel, apply_overrides, load_yaml, validate
from bratslab.data.config import DataSection
from bratslab.models.config import ModelSection
from bratslab.names import NAME_PATTERN
from bratslab.tracking.config import TrackingSection
from bratslab.train.config import ScalingSection, TrainingSection
from bratslab.tune.config import SweepConfig

log = logging.getLogger(__name__)


class JobSpec(StrictModel):
    """A training job: what to train, on what data, how, and where it is recorded."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Job name: the Ray Train run folder and MLflow run name; rerunning the "
        "same name resumes from its latest checkpoint.",
    )
    data: DataSection = Field(description="Training data.")
    model: ModelSection = Field(description="Model zoo config (+ init_from).")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Training.")
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Workers.")
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="MLflow.")
    sweep: SweepConfig | None = Field(default=None, description="Hyper-parameter sweep.")

    @model_validator(mode="after")
    def _check_groups(self) -> JobSpec:
        from bratslab.models.param_groups import group_names, select_groups

        cfg = self.model.model_config_only()
        for key, patterns in (
            ("training.freeze", self.training.freeze),
            ("training.optimizer.group_lr", list(self.training.optimizer.group_lr)),
        ):
            try:
                select_groups(cfg, patterns)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        if set(select_groups(cfg, self.training.freeze)) >= set(group_names(cfg)):
            raise ValueError("training.freeze: every parameter group is frozen; nothing to train")
        return self

    def resolved(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (what ``job.json`` and MLflow params hold)."""
        return self.model_dump(mode="json")


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read ``jobs/*.yaml`` with dotted ``--set`` overrides into a validated :class:`JobSpec`.

    The relative ``data.store`` is resolved here, once (see the module docstring).

    Raises:
        ConfigError: naming the file and every bad key (``training.epochs: ...``).
    """
    data = apply_overrides(load_yaml(path), overrides)
    spec = validate(JobSpec, data, str(path), overrides)
    try:
        store, where = spec.data.locate_store()
    except ConfigError:
        # Not here (yet): a job submitted to a cluster finds its store there; a local run stops
        # with this same error when it opens the store (DataSection.store_path).
        return spec
    if str(store) != spec.data.store:
        log.info("data.store %r: using %s (found in %s)", spec.data.store, store, where)
        spec.data.store = str(store)
    return spec


def job_from_dict(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate an in-memory spec (e.g. ``job.json`` or a sweep trial's resolved config)."""
    return validate(JobSpec, data, source)
