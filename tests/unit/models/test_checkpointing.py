"""Gradient checkpointing gives the same loss and gradients as the plain forward/backward."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_config

from bratslab.models import runtime
from bratslab.models.zoo import build_model


def _grads(model, x):
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    loss = sum(o.float().square().mean() / 2**i for i, o in enumerate(outs))
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("training_path", [False, True], ids=["fp32", "cpu-training-path"])
@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointing_gives_same_gradients(arch, training_path, monkeypatch):
    plain = build_model(tiny_config(arch, deep_supervision=True))
    ckpt = build_model(tiny_config(arch, deep_supervision=True, grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 5, 16, 16, 16)
    if training_path:  # channels-last + the per-arch autocast (MedNeXt: bf16 with fp32 islands)
        monkeypatch.delenv(runtime.ENV_CPU_BF16, raising=False)
        plain, ckpt = (runtime.prepare_model(m, "cpu") for m in (plain, ckpt))
        x = runtime.prepare_input(x, "cpu")

    with runtime.autocast("cpu", enabled=training_path, arch=arch):
        loss_a, grads_a = _grads(plain.train(), x)
        loss_b, grads_b = _grads(ckpt.train(), x)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_recomputes_in_backward():
    # Proof the option is active: checkpointed blocks run their forward twice per training step
    # (a pre-hook: recomputation may stop early, before a forward hook would fire).
    model = build_model(tiny_config("mednext", grad_checkpointing=True)).train()
    calls = []
    model.enc_stages[0][0].register_forward_pre_hook(lambda *_: calls.append(1))
    model(torch.randn(1, 5, 16, 16, 16)).sum().backward()
    assert len(calls) == 2
    calls.clear()
    with torch.no_grad():
        model.eval()(torch.randn(1, 5, 16, 16, 16))
    assert len(calls) == 1
