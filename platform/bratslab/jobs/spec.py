"""The job spec: one typed YAML format for training jobs, run locally or submitted to a cluster.

``jobs/*.yaml`` files hold sections ``data``, ``model`` (the zoo's :class:`ModelConfig` plus
``init_from``), ``training``, ``scaling``, ``tracking`` and, for sweeps, ``sweep``. Every section
is a :class:`~bratslab.config.StrictModel`, so an unknown or invalid key fails with a message
that names it (``training.optimizer.lr: Input should be greater than 0``).

Path convention: ``data.store`` may be absolute, ``~``-relative, or relative; a relative store
path is resolved against ``$BRATSLAB_HOME`` (not the current directory), because the same file is
submitted to a cluster whose working directory is unrelated to the submitter's. ``bratslab
data preprocess ... --out $BRATSLAB_HOME/store`` therefore pairs with ``data.store: store``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel, apply_overrides, load_yaml, validate
from bratslab.models.config import ModelConfig
from bratslab.tune.config import SweepConfig


class AugmentConfig(StrictModel):
    """Patch augmentation (MONAI ``Rand*`` transforms); probabilities are per patch."""

    enabled: bool = Field(default=True, description="Apply augmentation to training patches.")
    flip_prob: float = Field(default=0.5, ge=0, le=1, description="Flip probability per axis.")
    rotate_prob: float = Field(default=0.2, ge=0, le=1, description="Random rotation probability.")
    rotate_range_deg: float = Field(
        default=30.0, ge=0, le=180, description="Max rotation about each axis (degrees)."
    )
    scale_prob: float = Field(default=0.2, ge=0, le=1, description="Random zoom probability.")
    scale_range: float = Field(
        default=0.15, ge=0, lt=1, description="Zoom factor drawn from 1 ± this value."
    )
    noise_prob: float = Field(default=0.15, ge=0, le=1, description="Gaussian noise probability.")
    noise_std: float = Field(default=0.1, ge=0, description="Std of the Gaussian noise (z units).")
    intensity_prob: float = Field(
        default=0.15, ge=0, le=1, description="Random intensity scale and shift probability."
    )
    gamma_prob: float = Field(default=0.15, ge=0, le=1, description="Random gamma probability.")


class DataSection(StrictModel):
    """Which preprocessed store and fold to train on, and how patches are drawn."""

    store: str = Field(
        description="Preprocessed store folder (dataset.json inside); relative paths are "
        "resolved against $BRATSLAB_HOME."
    )
    fold: int = Field(default=0, ge=0, description="Cross-validation fold from the store.")
    foreground_oversample: float = Field(
        default=1 / 3,
        ge=0,
        le=1,
        description="Fraction of patches centred on a tumour voxel (nnU-Net uses 1/3).",
    )
    max_val_cases: int | None = Field(
        default=None, ge=1, description="Validate on at most this many of the fold's cases."
    )
    prefetch_batches: int = Field(
        default=2, ge=0, description="Batches prepared ahead by each worker's loader thread."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-patch augmentation."
    )

    def store_path(self) -> Path:
        """The store folder as an absolute path (relative → under ``$BRATSLAB_HOME``)."""
        from bratslab.settings import get_settings

        p = Path(self.store).expanduser()
        return p if p.is_absolute() else (get_settings().home / p).absolute()


class ModelSection(ModelConfig):
    """The zoo's model config plus where to initialise the weights from."""

    init_from: str | None = Field(
        default=None,
        description="Initial weights: a checkpoint/model directory (model.pt + model.json) or an "
        "MLflow model URI (runs:/..., models:/NAME@alias, models:/NAME/VERSION, models:/<id>). "
        "Kernel-size mismatches are bridged with UpKern.",
    )

    def model_config_only(self) -> ModelConfig:
        """The section without ``init_from``, as the zoo's :class:`ModelConfig`."""
        return ModelConfig.model_validate(self.model_dump(exclude={"init_from"}))


class OptimizerConfig(StrictModel):
    """Optimizer and per-parameter-group learning rates."""

    name: Literal["adamw", "sgd", "schedulefree_adamw"] = Field(
        default="adamw",
        description="adamw (MedNeXt recipe), sgd (nnU-Net: momentum 0.99, Nesterov, poly), or "
        "schedulefree_adamw (package schedulefree; no LR schedule besides warmup).",
    )
    lr: float = Field(default=1e-3, gt=0, description="Base learning rate.")
    weight_decay: float = Field(default=1e-5, ge=0, description="Weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="Adam betas.")
    eps: float = Field(default=1e-4, gt=0, description="Adam epsilon (1e-4 is safe with fp16).")
    momentum: float = Field(default=0.99, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(default=True, description="Nesterov momentum for SGD.")
    group_lr: dict[str, float] = Field(
        default_factory=dict,
        description="Learning rate per zoo parameter group; keys are group names or shell "
        "patterns (e.g. {stem: 1e-6, enc0: 1e-6}); groups not matched use `lr`.",
    )


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["cosine", "poly", "constant"] = Field(
        default="cosine", description="cosine annealing, poly decay (nnU-Net), or constant."
    )
    warmup_epochs: float = Field(default=0.0, ge=0, description="Linear warmup length (epochs).")
    min_lr_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Cosine floor as a fraction of each group's LR."
    )
    poly_exponent: float = Field(default=0.9, gt=0, description="Exponent of the poly decay.")


class TrainingSection(StrictModel):
    """Epochs, batches, optimisation and validation."""

    epochs: int = Field(default=100, ge=1, description="Number of epochs.")
    steps_per_epoch: int = Field(default=250, ge=1, description="Optimizer steps per epoch.")
    batch_size: int = Field(default=2, ge=1, description="Patches per step per worker.")
    patch_size: list[int] | None = Field(
        default=None, description="Patch size [X, Y, Z] (voxels); default: the store's."
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="LR schedule.")
    amp: bool = Field(
        default=True, description="Mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU."
    )
    grad_clip: float | None = Field(
        default=12.0, gt=0, description="Max global gradient norm (None disables clipping)."
    )
    deep_supervision_weights: list[float] | None = Field(
        default=None,
        description="Loss weight per deep-supervision output, full resolution first; default "
        "nnU-Net: 1/2^i, the lowest resolution dropped, normalised to sum 1.",
    )
    dice_weight: float = Field(default=1.0, ge=0, description="Weight of the soft Dice term.")
    bce_weight: float = Field(default=1.0, ge=0, description="Weight of the BCE term.")
    val_every: int = Field(default=1, ge=1, description="Validate every k epochs (and last).")
    val_overlap: float = Field(
        default=0.5, ge=0, lt=1, description="Sliding-window overlap for validation."
    )
    val_sw_batch_size: int = Field(default=2, ge=1, description="Windows per forward pass.")
    val_lesionwise: Literal["gli", "ssa", "ped", "men", "met"] | None = Field(
        default="gli",
        description="Also report BraTS 2023 lesion-wise Dice with this challenge's dilation and "
        "volume threshold (null: skip).",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="Zoo parameter groups (names or shell patterns such as 'enc*') to freeze, "
        "e.g. all but the last decoder stages and the head.",
    )
    seed: int = Field(default=0, description="Seed for weights, sampling and augmentation.")
    checkpoints_to_keep: int = Field(
        default=2, ge=1, description="Best checkpoints kept by val/dice_mean (+ the latest)."
    )
    fail_at_epoch: int | None = Field(
        default=None,
        ge=0,
        description="TESTS ONLY: the last worker exits abruptly at the start of this epoch on a "
        "fresh (not resumed) attempt, to exercise fault tolerance.",
    )

    @field_validator("patch_size")
    @classmethod
    def _check_patch(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 3 or any(int(s) < 8 for s in v)):
            raise ValueError("expected three sizes of at least 8 voxels, e.g. [128, 128, 128]")
        return v


class ScalingSection(StrictModel):
    """How many Ray Train workers and what each one holds."""

    num_workers: int = Field(default=1, ge=1, description="Data-parallel workers (DDP ranks).")
    use_gpu: bool = Field(default=False, description="One GPU per worker (NCCL) vs CPU (gloo).")
    cpus_per_worker: float = Field(default=1, gt=0, description="Logical CPUs per worker.")
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads per worker (default: CPUs held)."
    )
    max_failures: int = Field(
        default=2, ge=-1, description="Worker-group restarts from the last checkpoint (-1: ∞)."
    )


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


class JobSpec(StrictModel):
    """A training job: what to train, on what data, how, and where it is recorded."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
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

    Raises:
        ConfigError: naming the file and every bad key (``training.epochs: ...``).
    """
    data = apply_overrides(load_yaml(path), overrides)
    return validate(JobSpec, data, str(path))


def job_from_dict(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate an in-memory spec (e.g. ``job.json`` or a sweep trial's resolved config)."""
    return validate(JobSpec, data, source)
