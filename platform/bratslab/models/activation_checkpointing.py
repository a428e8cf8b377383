"""Activation (gradient) checkpointing helpers shared by the networks of the zoo.

A checkpointed block keeps only its inputs during the forward pass and recomputes its internal
activations during backward, trading ~one extra forward for memory. ``use_reentrant=False`` is the
variant PyTorch recommends: it works when inputs do not require grad, supports several inputs and
keyword arguments, and gives gradients identical to the plain forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_active(module: nn.Module, enabled: bool) -> bool:
    """Checkpoint only while training with autograd on: inference has nothing to save."""
    return enabled and module.training and torch.is_grad_enabled()


def run_block(block: nn.Module, *inputs: torch.Tensor, ckpt: bool) -> torch.Tensor:
    """``block(*inputs)``, recomputed in backward when ``ckpt`` is true."""
    if ckpt:
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, ckpt: bool) -> torch.Tensor:
    """Apply a sequence of single-input blocks, checkpointing each one separately (per block)."""
    for block in blocks:
        x = run_block(block, x, ckpt=ckpt)
    return x


def check_spatial(x: torch.Tensor, levels: int, name: str) -> None:
    """Raise a clear error unless ``x`` is ``(B, C, X, Y, Z)`` with each of X, Y, Z a multiple of
    ``2**levels`` (every down-sampling halves the size and the decoder must restore it exactly)."""
    factor = 2**levels
    if x.ndim != 5 or any(s % factor for s in x.shape[2:]):
        raise ValueError(
            f"{name}: input must be (B, C, X, Y, Z) with X, Y, Z divisible by {factor} "
            f"({levels} down-sampling levels), got shape {tuple(x.shape)}"
        )
