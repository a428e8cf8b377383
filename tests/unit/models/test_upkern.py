"""UpKern: depthwise kernels resampled trilinearly, every other tensor copied unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from bratslab.models.upkern import upkern_state_dict
from bratslab.models.zoo import build_model


def _mednext(kernel: int, **kw):
    cfg = tiny_config("mednext", **kw)
    cfg.mednext.kernel_size = kernel
    return build_model(cfg)


@pytest.mark.parametrize(("k_src", "k_dst"), [(3, 5), (5, 7), (3, 7)])
def test_upkern_resamples_depthwise_kernels_only(k_src, k_dst):
    src = _mednext(k_src)
    dst = _mednext(k_dst)
    src_state = src.state_dict()
    new_state = upkern_state_dict(src_state, dst)
    assert set(new_state) == set(dst.state_dict())
    resampled = 0
    for name, tensor in new_state.items():
        assert tensor.shape == dst.state_dict()[name].shape, name
        if src_state[name].shape == tensor.shape:
            assert torch.equal(tensor, src_state[name]), name
        else:
            resampled += 1
            assert name.endswith("conv1.weight") and tensor.shape[1] == 1
            expected = F.interpolate(src_state[name], size=(k_dst,) * 3, mode="trilinear")
            torch.testing.assert_close(tensor, expected)
            # The kernel centre is kept exactly (trilinear at the centre sample point).
            c_src, c_dst = k_src // 2, k_dst // 2
            torch.testing.assert_close(
                tensor[..., c_dst, c_dst, c_dst], src_state[name][..., c_src, c_src, c_src]
            )
    # every block and every down/up block has one depthwise kernel
    assert resampled == sum(1 for n in new_state if n.endswith("conv1.weight"))
    dst.load_state_dict(new_state)  # strict load works


def test_upkern_rejects_other_shape_mismatch():
    src = _mednext(3, out_channels=4, output="labels")
    dst = _mednext(5)
    with pytest.raises(ValueError, match=r"out_0\.conv_out\.weight"):
        upkern_state_dict(src.state_dict(), dst)


def test_upkern_rejects_different_tensors():
    src = _mednext(3, deep_supervision=True)
    dst = _mednext(5)
    with pytest.raises(ValueError, match="not in target.*out_blocks"):
        upkern_state_dict(src.state_dict(), dst)
