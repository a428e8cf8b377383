"""Sliding-window + TTA inference: the one-tiling TTA equals explicit per-transform passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bratslab.evaluate.inference import (
    Transform,
    predict_probabilities,
    predict_probabilities_naive,
    tta_transforms,
)


def _tiny_net(out_channels: int = 3, seed: int = 0) -> nn.Module:
    """A small conv net without symmetry, so flipped passes differ from the identity pass."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(5, 6, 3, padding=1),
        nn.InstanceNorm3d(6, affine=True),
        nn.LeakyReLU(),
        nn.Conv3d(6, out_channels, (3, 1, 3), padding=(1, 0, 1)),
    ).eval()


def _volume(shape=(32, 32, 32), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((5, *shape)).astype(np.float32)


def test_transforms_are_distinct_and_invertible():
    assert len(tta_transforms("none")) == 1
    assert len(tta_transforms("flips")) == 8
    ts = tta_transforms("flips+rot90")
    assert len(ts) == 16
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.float32).reshape(1, 2, 4, 4, 3)
    images = {tuple(t.forward(x).flatten().tolist()) for t in ts}
    assert len(images) == 16  # no two transforms coincide
    for t in ts:
        assert torch.equal(t.inverse(t.forward(x)), x)
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_transforms("mirror")


@pytest.mark.parametrize("tta", ["flips", "flips+rot90"])
def test_fast_tta_equals_mean_of_explicit_passes(tta):
    # 24³ volume, 16³ windows, overlap 0.5: window starts 0 and 8 on every axis, a tiling
    # that is its own mirror image, so the batched TTA must match the explicit passes exactly.
    model = _tiny_net()
    x = _volume((24, 24, 24))
    fast, std = predict_probabilities(model, x, (16, 16, 16), 0.5, tta, sw_batch_size=2, amp=False)
    explicit = np.zeros_like(fast)
    vol = torch.from_numpy(x)[None]
    from monai.inferers import sliding_window_inference

    transforms = tta_transforms(tta)
    with torch.no_grad():
        for t in transforms:
            p = sliding_window_inference(
                t.forward(vol),
                (16, 16, 16),
                1,
                lambda w: torch.sigmoid(model(w)),
                0.5,
                mode="gaussian",
            )
            explicit += t.inverse(torch.as_tensor(p))[0].numpy()
    explicit /= len(transforms)
    assert std is None
    assert fast.shape == (3, 24, 24, 24) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, explicit, atol=1e-5)
    naive = predict_probabilities_naive(model, x, (16, 16, 16), 0.5, tta, amp=False)
    np.testing.assert_allclose(fast, naive, atol=1e-5)
    # TTA really changes the result (the net is not mirror-symmetric).
    plain, _ = predict_probabilities(model, x, (16, 16, 16), 0.5, "none", amp=False)
    assert np.abs(plain - fast).max() > 1e-3


def test_uncertainty_is_std_over_passes_and_ensemble_averages():
    models = [_tiny_net(seed=0), _tiny_net(seed=1)]
    x = _volume((16, 24, 16))
    probs, std = predict_probabilities(
        models, x, (16, 16, 16), 0.5, "flips", amp=False, uncertainty=True
    )
    passes = []
    for m in models:
        for t in tta_transforms("flips"):
            # Explicit pass: transform the volume, predict, transform back.
            xt = t.forward(torch.from_numpy(x)[None])[0].numpy()
            p = predict_probabilities_naive(m, xt, (16, 16, 16), 0.5, "none", amp=False)
            passes.append(t.inverse(torch.from_numpy(p)[None])[0].numpy())
    passes = np.stack(passes)
    np.testing.assert_allclose(probs, passes.mean(0), atol=1e-5)
    np.testing.assert_allclose(std, passes.std(0), atol=1e-5)
    assert std.max() > 1e-3
    mean_only, none_std = predict_probabilities(models, x, (16, 16, 16), 0.5, "flips", amp=False)
    assert none_std is None
    np.testing.assert_allclose(mean_only, probs, atol=1e-5)


def test_softmax_models_and_non_square_rotation_windows():
    model = _tiny_net(out_channels=4)
    x = _volume((24, 16, 16))
    probs, _ = predict_probabilities(
        model, x, (16, 8, 16), 0.5, "flips+rot90", activation="softmax", amp=False
    )
    assert probs.shape == (4, 24, 16, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_bf16_autocast_agrees_with_float32():
    model = _tiny_net()
    x = _volume((24, 24, 24))
    p32, _ = predict_probabilities(model, x, (16, 16, 16), 0.5, "flips", amp=False)
    p16, _ = predict_probabilities(model, x, (16, 16, 16), 0.5, "flips", amp=True)
    assert p16.dtype == np.float32
    assert np.abs(p32 - p16).max() < 0.05


def test_batched_and_per_transform_calls_agree():
    from bratslab.evaluate.inference import TTAPredictor

    model = _tiny_net()
    window = torch.from_numpy(_volume((16, 16, 16)))[None].repeat(2, 1, 1, 1, 1)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    outs = {}
    for batched in (False, True):
        calls.clear()
        predictor = TTAPredictor([model], tta_transforms("flips"), batch_transforms=batched)
        outs[batched] = predictor(window)
        # 2 windows: one call per transform, or all 8 transforms in one batch (the default)
        assert calls == ([16] if batched else [2] * 8)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-6)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return float(2 * inter / (a.sum() + b.sum())) if a.any() or b.any() else 1.0


@pytest.mark.parametrize("amp", [False, True])
def test_batched_and_per_view_volumes_agree(amp):
    # The whole path predict uses, on a volume tiled by 8 overlapping windows: batching the 8
    # views into one call (the default) must give what one call per view gives.
    model = _tiny_net()
    x = _volume((24, 24, 20))
    out = {
        batched: predict_probabilities(
            model, x, (16, 16, 16), 0.5, "flips", amp=amp, batch_transforms=batched
        )[0]
        for batched in (False, True)
    }
    per_view, batched = out[False], out[True]
    masks = [p >= 0.5 for p in (per_view, batched)]
    assert 0.05 < masks[0].mean() < 0.95  # the masks are not trivial
    agreement = np.mean([_dice(masks[0][c], masks[1][c]) for c in range(3)])
    assert agreement >= 0.999
    # fp32 sums the same views in the same order: equal up to summation rounding.
    np.testing.assert_allclose(batched, per_view, atol=1e-5 if not amp else 2e-2)


def test_batch_views_default_is_per_device():
    from bratslab.evaluate.inference import TTAPredictor, batch_views_default

    assert batch_views_default("cpu") is True
    assert batch_views_default(torch.device("cuda")) is True
    assert batch_views_default("meta") is False
    predictor = TTAPredictor([_tiny_net()], tta_transforms("flips"), device="cpu")
    assert predictor.batch_transforms is True


def test_bad_arguments():
    model = _tiny_net()
    with pytest.raises(ValueError, match="overlap"):
        predict_probabilities(model, _volume(), (16, 16, 16), overlap=1.0)
    with pytest.raises(ValueError, match=r"\(C_in, X, Y, Z\)"):
        predict_probabilities(model, _volume()[0], (16, 16, 16))
    assert Transform().forward(torch.ones(1, 1, 2, 2, 2)).shape == (1, 1, 2, 2, 2)
