"""A measured check of CPU bf16 training numerics, and the guard that keeps it sound.

On a 2-core AMD EPYC (Zen 4: AVX512-BF16, no AMX; torch 2.13.0) oneDNN's bf16 *weight
gradient* of a dense 3-D convolution is garbage (relative error ~1, often ``inf``/``nan``) when
the input is at most 2 voxels deep along its first spatial axis and has >= 24 channels, e.g.
``Conv3d(32, 32, 3, padding=1)`` on ``(1, 32, 2, 4, 4)``; stride-2 convolutions from such
inputs fail too. Forward passes, input gradients, deeper inputs, 1x1x1 and depthwise
convolutions were correct in the same scan. On Intel CPUs with AMX the same layers are exact.
It bites the lowest resolution level of a network fed small patches (a SegResNet at 16³ or
32³), and one ``inf`` there poisons the whole gradient.

So bf16 training on CPU is decided by a measurement, not by the CPU's name:
:func:`bf16_training_health` runs a few tiny convolutions in bf16 and float32 once per process
and compares their gradients:

* ``"sound"``: bf16 everywhere it is enabled (AMX machines so far);
* ``"shallow-unsound"``: deep inputs are right, shallow ones are not; :func:`guard_shallow_convs`
  then runs every dense convolution whose input is at most :data:`SHALLOW_DEPTH` deep in float32
  (those layers hold a tiny share of the FLOPs, so the step keeps its bf16 speed);
* ``"unsound"``: even deep inputs are wrong; CPU training falls back to float32.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from bratslab.models.precision import float32_island

log = logging.getLogger(__name__)

SHALLOW_DEPTH = 2  # inputs this deep or less (first spatial axis) take the float32 path
TOLERANCE = 0.05  # bf16 rounding gives ~0.5 % relative error; the fault gives ~100 % or inf


def _bf16_gradient_error(channels: int, shape: tuple[int, int, int], stride: int) -> float:
    """Relative L2 error of bf16 vs float32 weight and input gradients of one 3x3x3 conv on a
    ``(1, channels, *shape)`` channels-last input (seeded, so a failure reproduces)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(channels, channels, 3, stride=stride, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, channels, *shape, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    grads = []
    for bf16 in (True, False):
        conv.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y.float() * g).sum().backward()
        grads.append((conv.weight.grad.float().clone(), x.grad.float().clone()))
    (w16, x16), (w32, x32) = grads
    errors = [((a - b).norm() / b.norm()).item() for a, b in ((w16, w32), (x16, x32))]
    return float("inf") if any(e != e for e in errors) else max(errors)  # nan counts as failure


@functools.cache
def bf16_training_health() -> str:
    """``"sound"``, ``"shallow-unsound"`` or ``"unsound"`` for bf16 training on this CPU.

    Measured once per process (a few milliseconds): a deep and a shallow case at stride 1 and
    2, in the thread count in force. Only meaningful where the CPU has native bf16.
    """
    deep = max(_bf16_gradient_error(32, (8, 8, 8), s) for s in (1, 2))
    if not deep < TOLERANCE:
        log.warning(
            "bf16 convolution gradients on this CPU are wrong (relative error %.3g); "
            "CPU training runs in float32",
            deep,
        )
        return "unsound"
    shallow = max(
        _bf16_gradient_error(32, (2, 4, 4), 1),
        _bf16_gradient_error(48, (2, 2, 1), 2),
        _bf16_gradient_error(48, (1, 1, 1), 2),
    )
    if not shallow < TOLERANCE:
        log.info(
            "bf16 weight gradients of convolutions over inputs <= %d voxels deep are wrong on "
            "this CPU (relative error %.3g): those layers train in float32",
            SHALLOW_DEPTH,
            shallow,
        )
        return "shallow-unsound"
    return "sound"


class ShallowSafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs in float32 while training under CPU autocast when its input
    ``(B, C, X, Y, Z)`` has ``X <= SHALLOW_DEPTH``. Parameters and state-dict keys are
    ``nn.Conv3d``'s; everywhere else (inference, CUDA, deeper inputs) it *is* ``nn.Conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and x.shape[2] <= SHALLOW_DEPTH:
            return float32_island(super().forward, x)
        return super().forward(x)


def guard_shallow_convs(model: nn.Module) -> int:
    """Swap every plain dense ``nn.Conv3d`` of ``model`` for :class:`ShallowSafeConv3d`, in
    place; returns how many were swapped. Depthwise convolutions are left alone (they run in
    float32 under autocast already where it matters)."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Conv3d and module.groups == 1:
            module.__class__ = ShallowSafeConv3d
            swapped += 1
    return swapped
