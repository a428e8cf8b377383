"""Fast, numerically sound execution settings for the zoo's networks (training and inference).

* CPU: the ``channels_last_3d`` memory layout, which lets oneDNN use its blocked NDHWC kernels
  without reordering every layer's input and output: ~3x faster than MONAI's default NCDHW for a
  MedNeXt-S fp32 training step (BENCHMARKS.md; 2 cores, AVX512-BF16/AMX).
  bfloat16 autocast on CPU is chosen per architecture (:data:`CPU_BF16_ARCHS`; all three
  today): it makes U-Net and SegResNet steps ~1.5-2x faster (dense convolutions on AMX). Whole-
  network bf16 made MedNeXt ~2x *slower* (oneDNN's bf16 depthwise 3-D convolution and
  GroupNorm backward take slow paths), so MedNeXt's depthwise convolutions and norms keep
  float32 under autocast (:func:`~bratslab.models.precision.float32_island`) while its 1x1x1
  expansion/projection layers and GELUs run bf16: ~1.5x faster than its all-float32 step
  (BENCHMARKS.md).
  ``autocast(device, arch=cfg.arch)`` enables it; ``BRATSLAB_CPU_BF16=1`` / ``0`` forces it on /
  off. It is used only on CPUs with native bf16, and only as far as a measurement on this CPU
  shows it sound (:mod:`~bratslab.models.bf16_guard`: oneDNN's bf16 weight gradient is wrong for
  very shallow inputs on AVX512-BF16 CPUs without AMX; those layers then train in float32, and a
  CPU whose bf16 gradients are wrong everywhere trains in float32). Inference (forward only,
  ``inference=True``) uses bf16 for every architecture, MedNeXt's depthwise layers included
  (their slow bf16 paths are in the *backward*).
* CUDA: float16 autocast (AMP; pair it with ``torch.amp.GradScaler``), or bfloat16 where the GPU
  supports it and ``prefer_bf16`` is set (no scaler needed). Layout stays NCDHW.

Autocast keeps reductions and normalisations (GroupNorm/InstanceNorm, losses) in float32; the
network's logits may come back in the low-precision dtype, so cast them with ``.float()`` before
the loss or sigmoid/softmax.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from bratslab.compat.torch_ops import mkldnn_bf16_supported
from bratslab.models.bf16_guard import bf16_training_health, guard_shallow_convs
from bratslab.models.mednext import MedNeXtNet, use_fast_cpu_layers

# Escape hatches for debugging numerics or for CPUs where a setting turns out slower.
ENV_CPU_BF16 = "BRATSLAB_CPU_BF16"  # "1"/"0" force bf16 autocast on CPU on/off for every arch

# Architectures whose CPU training step was measured faster with bf16 autocast (dense and 1x1x1
# convolutions map onto AMX). MedNeXt qualifies because its depthwise layers opt out
# (float32_island); in bf16 they would make it slower than float32.
CPU_BF16_ARCHS = frozenset({"unet", "segresnet", "mednext"})
ENV_CHANNELS_LAST = "BRATSLAB_CHANNELS_LAST"  # "0" disables channels_last_3d on CPU


def _env_flag(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off")


def cpu_bf16_supported() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX) through oneDNN."""
    return mkldnn_bf16_supported()


def cpu_bf16_training_sound() -> bool:
    """True unless the measured check finds bf16 convolution gradients wrong on this CPU even
    for deep inputs (:func:`~bratslab.models.bf16_guard.bf16_training_health`)."""
    return bf16_training_health() != "unsound"


def amp_dtype(
    device: str | torch.device,
    prefer_bf16: bool = False,
    arch: str | None = None,
    inference: bool = False,
) -> torch.dtype | None:
    """Autocast dtype for ``device``, or ``None`` where mixed precision is not used.

    On CPU, bf16 is used for inference, for training the architectures in
    :data:`CPU_BF16_ARCHS` (pass ``arch``), or for all with ``BRATSLAB_CPU_BF16=1``;
    ``BRATSLAB_CPU_BF16=0`` turns it off everywhere.
    """
    device = torch.device(device)
    if device.type == "cpu":
        wanted = _env_flag(ENV_CPU_BF16, default=inference or arch in CPU_BF16_ARCHS)
        if not (wanted and cpu_bf16_supported()):
            return None
        return torch.bfloat16 if inference or cpu_bf16_training_sound() else None
    if device.type == "cuda":
        if prefer_bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return None


def needs_grad_scaler(device: str | torch.device, prefer_bf16: bool = False) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 do not."""
    return amp_dtype(device, prefer_bf16) == torch.float16


@contextlib.contextmanager
def autocast(
    device: str | torch.device,
    enabled: bool = True,
    prefer_bf16: bool = False,
    arch: str | None = None,
    inference: bool = False,
) -> Iterator[None]:
    """Mixed-precision context for the forward pass (and the loss) on ``device``.

    fp16 on CUDA (bf16 with ``prefer_bf16`` where supported); on CPU bf16 where measured faster
    (inference, ``arch`` in :data:`CPU_BF16_ARCHS`, or ``BRATSLAB_CPU_BF16=1``) and the CPU has
    native bf16, else a no-op.
    """
    device = torch.device(device)
    dtype = amp_dtype(device, prefer_bf16, arch, inference) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def use_channels_last(device: str | torch.device) -> bool:
    """channels_last_3d pays off with oneDNN on CPU; on CUDA, cuDNN's 3-D kernels gain little
    and GroupNorm is slower in that layout, so NCDHW stays."""
    return torch.device(device).type == "cpu" and _env_flag(ENV_CHANNELS_LAST)


def prepare_model(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in the fastest memory layout for it (in place; returned).

    On CPU it also swaps in the CPU-only layers, which keep parameters and state-dict keys:
    MedNeXt's faster layers (:func:`~bratslab.models.mednext.use_fast_cpu_layers`), and, where
    the measured bf16 check found shallow convolutions unsound, their float32 guard
    (:func:`~bratslab.models.bf16_guard.guard_shallow_convs`). On CUDA the model stays plain
    MONAI/PyTorch, so ``print(model)`` shows what runs.
    """
    device = torch.device(device)
    if device.type == "cpu":
        _use_cpu_layers(model)
    if use_channels_last(device):
        return model.to(device=device, memory_format=torch.channels_last_3d)
    return model.to(device)


def prepare_input(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Move a ``(B, C, X, Y, Z)`` float batch to ``device`` in the layout :func:`prepare_model`
    chose. Other ranks are only moved."""
    device = torch.device(device)
    x = x.to(device, non_blocking=True)
    if x.ndim == 5 and use_channels_last(device):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _use_cpu_layers(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, MedNeXtNet):
            use_fast_cpu_layers(module)
    if cpu_bf16_supported() and bf16_training_health() == "shallow-unsound":
        guard_shallow_convs(model)
