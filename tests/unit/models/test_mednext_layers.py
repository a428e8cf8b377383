"""MedNeXt's faster CPU layers compute MONAI's MedNeXt: same state dict, outputs, gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from monai.networks.blocks.mednext_block import MedNeXtUpBlock
from monai.networks.nets import MedNeXt
from torch import nn

from bratslab.models import runtime
from bratslab.models.depthwise import DepthwiseConv3d
from bratslab.models.mednext import use_fast_cpu_layers, use_monai_layers
from bratslab.models.norm import InstanceGroupNorm
from bratslab.models.transposed import FastConvTranspose3d
from bratslab.models.zoo import build_model

FAST = (DepthwiseConv3d, FastConvTranspose3d, InstanceGroupNorm)
PLAIN = (nn.Conv3d, nn.ConvTranspose3d, nn.GroupNorm)


def _monai_twin(model: nn.Module, deep_supervision: bool) -> MedNeXt:
    plain = MedNeXt(spatial_dims=3, init_filters=4, in_channels=5, out_channels=3,
                    blocks_down=(1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1),
                    kernel_size=3, encoder_expansion_ratio=2, decoder_expansion_ratio=2,
                    bottleneck_expansion_ratio=2, use_residual_connection=True,
                    norm_type="group", deep_supervision=deep_supervision)  # fmt: skip
    plain.load_state_dict(model.state_dict())  # same keys and shapes, strictly
    return plain


def _step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    outs = list(out) if isinstance(out, list | tuple) else [out]
    sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs).backward()
    return [o.detach() for o in outs] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_fast_layers_match_monai_mednext(channels_last, deep_supervision):
    model = build_model(tiny_config("mednext", deep_supervision=deep_supervision)).train()
    use_fast_cpu_layers(model)
    kinds = {type(m) for m in model.modules()}
    assert set(FAST) <= kinds and not kinds & {nn.ConvTranspose3d, nn.GroupNorm, MedNeXtUpBlock}
    assert not [m for m in model.modules() if type(m) is nn.Conv3d and m.groups > 1]
    plain = _monai_twin(model, deep_supervision).train()
    x = torch.randn(1, 5, 16, 16, 16)
    if channels_last:  # the CPU training layout, where batch norm stands in for GroupNorm
        model, plain = (m.to(memory_format=torch.channels_last_3d) for m in (model, plain))
        x = x.contiguous(memory_format=torch.channels_last_3d)
    want, got = _step(plain, x), _step(model, x)
    assert len(want) == len(got)
    scale = max(t.abs().max() for t in want)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_cpu_layers_only_on_cpu():
    # A freshly built model is MONAI's own (what runs on CUDA); prepare_model swaps the CPU ones.
    model = build_model(tiny_config("mednext"))
    kinds = {type(m) for m in model.modules()}
    assert not kinds & set(FAST) and set(PLAIN) | {MedNeXtUpBlock} <= kinds
    kinds = {type(m) for m in runtime.prepare_model(model, "cpu").modules()}
    assert set(FAST) <= kinds


def test_use_monai_layers_restores_the_plain_classes():
    model = runtime.prepare_model(build_model(tiny_config("mednext")), "cpu")
    use_monai_layers(model)
    kinds = {type(m) for m in model.modules()}
    assert not kinds & set(FAST) and set(PLAIN) | {MedNeXtUpBlock} <= kinds
