"""The training stage's configs: the job spec's ``training`` and ``scaling`` sections.

Each field's description is user documentation: ``bratslab spec explain training`` prints them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel


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
    val_lesionwise: Literal["gli", "ssa", "ped", "men", "met", "panoptica"] | None = Field(
        default="gli",
        description="Also report lesion-wise Dice per region: the BraTS 2023 definition with "
        "this challenge's dilation and volume threshold, or panoptica (the organisers' metric "
        "since 2025: lesions matched on Dice, every region of the store's profile; needs "
        "bratslab[panoptica] on the workers); null: skip.",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="Zoo parameter groups (names or shell patterns such as 'enc*') to freeze, "
        "e.g. all but the last decoder stages and the head.",
    )
    seed: int = Field(default=0, description="Seed for weights, sampling and augmentation.")
    selection_metric: Literal["val/dice_mean", "val/lesion_dice_mean"] = Field(
        default="val/dice_mean",
        description="Validation score that picks the best checkpoint (the one logged as the "
        "model): mean voxel Dice over WT/TC/ET, or the BraTS lesion-wise Dice mean (needs "
        "val_lesionwise; recommended for real data, where small false-positive components "
        "cost lesion-wise Dice but hardly any voxel Dice). Both are logged either way.",
    )
    checkpoints_to_keep: int = Field(
        default=2, ge=1, description="Best checkpoints kept by the selection metric (+ the latest)."
    )

    @field_validator("patch_size")
    @classmethod
    def _check_patch(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 3 or any(int(s) < 8 for s in v)):
            raise ValueError("expected three sizes of at least 8 voxels, e.g. [128, 128, 128]")
        return v

    @model_validator(mode="after")
    def _check_selection(self) -> TrainingSection:
        if self.selection_metric == "val/lesion_dice_mean" and not self.val_lesionwise:
            raise ValueError(
                "selection_metric val/lesion_dice_mean needs val_lesionwise (e.g. gli or ssa)"
            )
        return self


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
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="How the workers' placement group spreads over nodes (Ray's strategies): "
        "PACK fills as few nodes as possible, SPREAD spreads where it can, STRICT_SPREAD puts "
        "every worker on a different node (waits until that many nodes have room), "
        "STRICT_PACK all on one node.",
    )
