"""Optimizers on the zoo's parameter groups, and the learning-rate schedule.

Per-group learning rates implement the slow-stem transfer recipe used when adapting a model to a
small cohort such as BraTS-Africa (stem and first encoder stage at 1e-6, the rest at 1e-4, AdamW,
warmup then cosine); frozen groups are left out of the optimizer and have
``requires_grad=False``. Schedules multiply each group's own base LR, so the ratios hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bratslab.models.config import ModelConfig
from bratslab.models.param_groups import optimizer_param_groups
from bratslab.train.config import OptimizerConfig, ScheduleConfig


@dataclass
class OptimizerBundle:
    """The optimizer, its LR schedule (None for schedule-free) and the group names in order."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    group_names: list[str]

    @property
    def schedule_free(self) -> bool:
        return hasattr(self.optimizer, "eval") and hasattr(self.optimizer, "train")

    def train_mode(self) -> None:
        """Schedule-free AdamW keeps two weight sequences: switch to the training one."""
        if self.schedule_free:
            self.optimizer.train()

    def eval_mode(self) -> None:
        """Switch schedule-free weights to the averaged sequence (validate and save these)."""
        if self.schedule_free:
            self.optimizer.eval()

    def lrs(self) -> dict[str, float]:
        """Current LR per group: ``{"lr/enc0": 1e-4, ...}``."""
        return {f"lr/{g['name']}": float(g["lr"]) for g in self.optimizer.param_groups}


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warmup from
    1/(warmup+1), then cosine (to ``min_lr_ratio``), poly ``(1 - t)^p`` or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if cfg.name == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    if cfg.name == "poly":
        return (1.0 - t) ** cfg.poly_exponent
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(
    model: nn.Module,
    model_cfg: ModelConfig,
    opt: OptimizerConfig,
    schedule: ScheduleConfig,
    *,
    total_steps: int,
    steps_per_epoch: int,
    frozen: list[str] | None = None,
) -> OptimizerBundle:
    """Build the optimizer over the zoo's named parameter groups.

    ``model`` is the bare module (not DDP-wrapped): parameters are shared with the wrapper.
    """
    # Sets requires_grad=False on frozen groups and leaves them out; group_lr/freeze accept
    # shell patterns over group names ("dec*"), a typo is an error rather than a no-op.
    torch_groups = optimizer_param_groups(
        model, model_cfg, opt.lr, lr_by_group=opt.group_lr, frozen=frozen or []
    )
    warmup = int(round(schedule.warmup_epochs * steps_per_epoch))
    if opt.name == "adamw":
        optimizer = torch.optim.AdamW(
            torch_groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "sgd":
        optimizer = torch.optim.SGD(
            torch_groups,
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    else:
        import schedulefree

        # Schedule-free replaces the decay schedule by iterate averaging; warmup is built in.
        optimizer = schedulefree.AdamWScheduleFree(
            torch_groups,
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            warmup_steps=warmup,
        )
        return OptimizerBundle(optimizer, None, [g["name"] for g in torch_groups])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, schedule)
    )
    return OptimizerBundle(optimizer, scheduler, [g["name"] for g in torch_groups])
