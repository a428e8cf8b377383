"""Private PyTorch API used by bratslab (checked against torch 2.13.0).

Named ``torch_ops`` rather than ``torch`` so that ``import torch`` inside the package can never
resolve here.
"""

from __future__ import annotations

import torch


def mkldnn_bf16_supported() -> bool:
    """True when oneDNN reports native bf16 (AVX512-BF16 or AMX) on this CPU.

    Private: ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` (torch 2.13.0). Public replacement:
    none yet; ``torch.backends.mkldnn`` exposes only ``is_available()``. Any failure (op renamed
    or removed) reads as "no native bf16", which falls back to float32, never to a wrong result.
    """
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False
