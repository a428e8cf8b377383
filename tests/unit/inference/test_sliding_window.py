"""Sliding-window + TTA inference: every TTA path equals explicit per-transform passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bratslab.inference.sliding_window import (
    Transform,
    predict_probabilities,
    predict_probabilities_naive,
    tta_transforms,
)

PATHS = ("naive", "perview", "batched", "batched:3")


@pytest.fixture(autouse=True)
def _own_tta_cache(tmp_path, monkeypatch):
    """``tta_path="auto"`` (the default) caches its measurement under $BRATSLAB_HOME."""
    from bratslab.inference.tta_path import clear_memo

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    clear_memo()
    yield
    clear_memo()


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


_REFERENCES: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _references(tta: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(explicit mean over per-transform MONAI passes, the naive path, no TTA) for the 24³
    volume: the same for every TTA path, so computed once per ``tta`` and module."""
    if tta in _REFERENCES:
        return _REFERENCES[tta]
    from monai.inferers import sliding_window_inference

    model = _tiny_net()
    x = _volume((24, 24, 24))
    vol = torch.from_numpy(x)[None]
    transforms = tta_transforms(tta)
    explicit = np.zeros((3, 24, 24, 24), np.float32)
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
    naive = predict_probabilities_naive(model, x, (16, 16, 16), 0.5, tta, amp=False)
    plain, _ = predict_probabilities(model, x, (16, 16, 16), 0.5, "none", amp=False)
    _REFERENCES[tta] = explicit, naive, plain
    return _REFERENCES[tta]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tta", ["flips", "flips+rot90"])
def test_fast_tta_equals_mean_of_explicit_passes(tta, path):
    # 24³ volume, 16³ windows, overlap 0.5: window starts 0 and 8 on every axis, a tiling
    # that is its own mirror image, so every path must match the explicit passes exactly.
    model = _tiny_net()
    x = _volume((24, 24, 24))
    fast, std = predict_probabilities(
        model, x, (16, 16, 16), 0.5, tta, sw_batch_size=2, amp=False, tta_path=path
    )
    explicit, naive, plain = _references(tta)
    assert std is None
    assert fast.shape == (3, 24, 24, 24) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, explicit, atol=1e-5)
    np.testing.assert_allclose(fast, naive, atol=1e-5)
    # TTA really changes the result (the net is not mirror-symmetric).
    assert np.abs(plain - fast).max() > 1e-3


@pytest.mark.parametrize("path", ["naive", "batched"])
def test_uncertainty_is_std_over_passes_and_ensemble_averages(path):
    models = [_tiny_net(seed=0), _tiny_net(seed=1)]
    x = _volume((16, 24, 16))
    probs, std = predict_probabilities(
        models, x, (16, 16, 16), 0.5, "flips", amp=False, uncertainty=True, tta_path=path
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


@pytest.mark.parametrize(("views_per_call", "calls"), [(None, [16]), (1, [2] * 8), (3, [6, 6, 4])])
def test_views_per_call_batches_a_windows_views(views_per_call, calls):
    from bratslab.inference.sliding_window import TTAPredictor

    model = _tiny_net()
    window = torch.from_numpy(_volume((16, 16, 16)))[None].repeat(2, 1, 1, 1, 1)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    reference = TTAPredictor([model], tta_transforms("flips"), views_per_call=1)(window)
    seen.clear()
    out = TTAPredictor([model], tta_transforms("flips"), views_per_call=views_per_call)(window)
    # 2 windows: all 8 views in one batch of 16, one call per view, or 3 views per call.
    assert seen == calls
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="views_per_call"):
        TTAPredictor([model], tta_transforms("flips"), views_per_call=0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return float(2 * inter / (a.sum() + b.sum())) if a.any() or b.any() else 1.0


@pytest.mark.parametrize("amp", [False, True])
def test_every_path_gives_the_same_probabilities_on_any_tiling(amp):
    # A volume tiled by 8 overlapping windows whose tiling is NOT its own mirror image (20 along
    # Z: starts 0 and 4): the paths predict may choose must still agree, because all of them
    # tile the untransformed volume. fp32 sums the same terms in another order; bf16 rounds
    # each view's activations, so the paths agree to bf16 precision there.
    model = _tiny_net()
    x = _volume((24, 24, 20))
    out = {
        p: predict_probabilities(model, x, (16, 16, 16), 0.5, "flips", amp=amp, tta_path=p)[0]
        for p in PATHS
    }
    masks = {p: v >= 0.5 for p, v in out.items()}
    assert 0.05 < masks["perview"].mean() < 0.95  # the masks are not trivial
    for p in PATHS[1:]:
        agreement = np.mean([_dice(masks["naive"][c], masks[p][c]) for c in range(3)])
        assert agreement >= 0.999
        np.testing.assert_allclose(out[p], out["naive"], atol=1e-5 if not amp else 2e-2)
    if not amp:  # the auto path is one of them
        auto, _ = predict_probabilities(model, x, (16, 16, 16), 0.5, "flips", amp=False)
        np.testing.assert_allclose(auto, out["naive"], atol=1e-5)


def test_bad_arguments():
    model = _tiny_net()
    with pytest.raises(ValueError, match="overlap"):
        predict_probabilities(model, _volume(), (16, 16, 16), overlap=1.0)
    with pytest.raises(ValueError, match=r"\(C_in, X, Y, Z\)"):
        predict_probabilities(model, _volume()[0], (16, 16, 16))
    with pytest.raises(ValueError, match="tta_path must be"):
        predict_probabilities(model, _volume(), (16, 16, 16), tta="flips", tta_path="fast")
    assert Transform().forward(torch.ones(1, 1, 2, 2, 2)).shape == (1, 1, 2, 2, 2)
