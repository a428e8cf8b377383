"""CPU runtime policy; the opt-in bf16 path (autocast + channels_last_3d) stays close to fp32."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_config

from bratslab.models import runtime
from bratslab.models.precision import float32_island
from bratslab.models.zoo import build_model


def test_cpu_policy(monkeypatch):
    monkeypatch.delenv(runtime.ENV_CPU_BF16, raising=False)
    assert runtime.amp_dtype("cpu") is None  # training without a measured architecture: fp32
    native = torch.bfloat16 if runtime.cpu_bf16_supported() else None
    assert runtime.amp_dtype("cpu", arch="unet") == native  # bf16 measured faster for U-Net
    # ... and for MedNeXt, whose depthwise layers and norms opt out (float32_island)
    assert runtime.amp_dtype("cpu", arch="mednext") == native
    # Forward-only inference: bf16 for every architecture (MedNeXt's slow bf16 path is backward).
    assert runtime.amp_dtype("cpu", arch="mednext", inference=True) == native
    assert runtime.amp_dtype("cpu", inference=True) == native
    assert not runtime.needs_grad_scaler("cpu")
    assert runtime.amp_dtype("cuda") == torch.float16
    x = runtime.prepare_input(torch.randn(1, 2, 4, 4, 4), "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last_3d)


def test_env_switches_bf16(monkeypatch):
    monkeypatch.setenv(runtime.ENV_CPU_BF16, "1")
    assert runtime.amp_dtype("cpu") == (torch.bfloat16 if runtime.cpu_bf16_supported() else None)
    monkeypatch.setenv(runtime.ENV_CPU_BF16, "0")
    assert runtime.amp_dtype("cpu", arch="unet") is None
    with runtime.autocast("cpu"):
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_path_matches_fp32(arch, monkeypatch):
    monkeypatch.setenv(runtime.ENV_CPU_BF16, "1")
    if runtime.amp_dtype("cpu") is None:
        pytest.skip("no native bf16 on this CPU: the fast path is plain fp32")
    ref = build_model(tiny_config(arch, deep_supervision=False))
    fast = build_model(tiny_config(arch, deep_supervision=False))
    fast.load_state_dict(ref.state_dict())
    fast = runtime.prepare_model(fast, "cpu")
    x = torch.randn(1, 5, 16, 16, 16)

    ref(x).float().square().mean().backward()
    with runtime.autocast("cpu"):
        out = fast(runtime.prepare_input(x, "cpu"))
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()

    with torch.no_grad():
        ref_out = ref(x)
    rel = (out.float() - ref_out).norm() / ref_out.norm()
    assert rel < 0.05, f"bf16 output deviates by {rel:.3f} (relative L2)"
    # Compare the whole gradient vector: single near-zero entries (e.g. a conv bias right before
    # a norm, whose true gradient is 0) are pure rounding noise in any low precision.
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    g_fast = torch.cat([p.grad.float().flatten() for p in fast.parameters()])
    assert torch.isfinite(g_fast).all()
    assert g_fast.norm() == pytest.approx(g_ref.norm().item(), rel=0.1)
    assert torch.nn.functional.cosine_similarity(g_fast, g_ref, dim=0) > 0.95


def test_float32_island_only_while_training_under_cpu_autocast():
    x = torch.randn(2, 3)
    seen = []

    def probe(t):
        seen.append((t.dtype, torch.is_autocast_enabled("cpu")))
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16):
        float32_island(probe, x.bfloat16())
        with torch.no_grad():  # inference keeps the autocast dtype
            float32_island(probe, x.bfloat16())
    float32_island(probe, x)
    assert seen == [(torch.float32, False), (torch.bfloat16, True), (torch.float32, False)]
