"""The measured bf16 check and the shallow-convolution guard keep CPU bf16 training sound.

Seeded throughout (conftest's autouse fixture and explicit generators), so a failure reproduces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from conftest import tiny_config
from torch import nn

from bratslab.models import bf16_guard, runtime
from bratslab.models.zoo import build_model

needs_bf16 = pytest.mark.skipif(
    not runtime.cpu_bf16_supported(), reason="no native bf16 on this CPU: training is float32"
)


def _weight_grad(conv: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y.float() * g).sum().backward()
    return conv.weight.grad.float().clone()


def test_health_is_one_of_three_and_cached():
    assert bf16_guard.bf16_training_health() in {"sound", "shallow-unsound", "unsound"}
    assert bf16_guard.bf16_training_health.cache_info().currsize == 1


@needs_bf16
@pytest.mark.parametrize("shape", [(2, 4, 4), (2, 2, 2), (1, 4, 4)])
def test_guarded_conv_gives_float32_gradients_for_shallow_inputs(shape):
    # The layer class that failed on AVX512-BF16 without AMX: >= 24 channels, <= 2 voxels deep.
    conv = nn.Conv3d(32, 32, 3, padding=1, bias=False).to(memory_format=torch.channels_last_3d)
    bf16_guard.guard_shallow_convs(conv)
    assert type(conv) is bf16_guard.ShallowSafeConv3d
    x = torch.randn(1, 32, *shape).contiguous(memory_format=torch.channels_last_3d)
    got, want = _weight_grad(conv, x, bf16=True), _weight_grad(conv, x, bf16=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)  # float32 path: exact up to summation order


@needs_bf16
def test_guard_keeps_bf16_for_deep_inputs_and_inference():
    conv = nn.Conv3d(8, 8, 3, padding=1)
    bf16_guard.guard_shallow_convs(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 8, 4, 4, 4)).dtype == torch.bfloat16
        with torch.no_grad():  # inference forward is correct in bf16 on every CPU seen
            assert conv(torch.randn(1, 8, 2, 2, 2)).dtype == torch.bfloat16


def test_guard_swaps_only_dense_convs_and_keeps_the_state_dict():
    model = nn.Sequential(nn.Conv3d(4, 4, 3), nn.Conv3d(4, 4, 3, groups=4), nn.Conv3d(4, 2, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert bf16_guard.guard_shallow_convs(model) == 2
    assert [type(m) for m in model] == [
        bf16_guard.ShallowSafeConv3d,
        nn.Conv3d,
        bf16_guard.ShallowSafeConv3d,
    ]
    assert before.keys() == model.state_dict().keys()


@needs_bf16
def test_prepare_model_guards_exactly_when_the_check_says_so():
    model = runtime.prepare_model(build_model(tiny_config("segresnet")), "cpu")
    guarded = any(isinstance(m, bf16_guard.ShallowSafeConv3d) for m in model.modules())
    assert guarded == (bf16_guard.bf16_training_health() == "shallow-unsound")
    if bf16_guard.bf16_training_health() == "unsound":
        assert runtime.amp_dtype("cpu", arch="segresnet") is None


def _has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@needs_bf16
@pytest.mark.skipif(
    not _has_amx(), reason="no AMX here: the in-process tests already ran the non-AMX kernels"
)
def test_bf16_equivalence_on_the_non_amx_kernels(tmp_path):
    """The SegResNet bf16-vs-fp32 test once more, with oneDNN held to its AVX512-BF16 kernels
    (what an AMD Zen 4 CPU runs), so an AMX machine checks the non-AMX path too.

    Both inner tests must have run and passed: a run where they skip (say, bf16 reported
    unsupported under the restricted kernels) exits 0 too, yet checks nothing."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "OMP_NUM_THREADS": "2"}
    here = Path(__file__).parent
    report = tmp_path / "inner.xml"
    inner = [
        f"{here / 'test_runtime.py'}::test_bf16_path_matches_fp32",
        f"{here / 'test_checkpointing.py'}::test_checkpointing_gives_same_gradients",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", *inner],
        env=env, capture_output=True, text=True, timeout=600, cwd=here,
    )  # fmt: skip
    output = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, output
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {c.get("name"): [child.tag for child in c] for c in cases}
    not_passed = {n: t for n, t in outcomes.items() if {"failure", "error", "skipped"} & set(t)}
    ran = {name.partition("[")[0] for name in outcomes}  # parametrised cases count once
    assert not not_passed and ran == {test.rpartition("::")[2] for test in inner}, (
        f"inner outcomes {outcomes}\n{output}"
    )
