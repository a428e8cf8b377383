"""Optimizers (AdamW per-group LR, SGD + poly, schedule-free AdamW), schedules and freezing,
exercised with real training steps on a tiny U-Net (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bratslab.data.augment_config import AugmentConfig
from bratslab.data.loader import PatchSampler, epoch_batches
from bratslab.models.param_groups import param_groups
from bratslab.models.zoo import build_model
from bratslab.train.config import OptimizerConfig, ScheduleConfig
from bratslab.train.init_from import init_weights
from bratslab.train.losses import SegmentationLoss
from bratslab.train.optim import build_optimizer, lr_factor
from bratslab.train.step import StepContext, train_step


def _batch(store, cfg):
    rows = [
        {"case_id": c, "x_path": str(store / f"{c}_x.npy"), "y_path": str(store / f"{c}_y.npy")}
        for c in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")
    ]
    sampler = PatchSampler([16, 16, 16], cfg.in_channels, fg_fraction=1.0, seed=0)
    return next(
        epoch_batches(
            rows,
            steps=1,
            batch_size=2,
            sampler=sampler,
            augment=AugmentConfig(enabled=False),
            seed=0,
        )
    )


def _train(cfg, opt, schedule, batch, steps=6, frozen=(), scaler=None):
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bundle = build_optimizer(
        model, cfg, opt, schedule, total_steps=steps, steps_per_epoch=steps, frozen=list(frozen)
    )
    if scaler is None:
        scaler = torch.amp.GradScaler("cuda", enabled=False)
    ctx = StepContext(
        model=model,
        bundle=bundle,
        loss_fn=SegmentationLoss(),
        scaler=scaler,
        device=torch.device("cpu"),
        grad_clip=12.0,
    )
    model.train()
    bundle.train_mode()
    losses = [train_step(ctx, *batch) for _ in range(steps)]
    bundle.eval_mode()
    return model, bundle, before, losses


@pytest.mark.parametrize(
    ("opt", "schedule"),
    [
        (OptimizerConfig(name="adamw", lr=3e-3), ScheduleConfig(name="cosine", warmup_epochs=0.25)),
        (OptimizerConfig(name="sgd", lr=3e-2), ScheduleConfig(name="poly")),
        (OptimizerConfig(name="schedulefree_adamw", lr=3e-3), ScheduleConfig(warmup_epochs=0.25)),
    ],
    ids=["adamw", "sgd-poly", "schedulefree"],
)
def test_optimizer_paths_reduce_the_loss(tiny_store, tiny_unet_cfg, opt, schedule):
    batch = _batch(tiny_store, tiny_unet_cfg)
    _, bundle, _, losses = _train(tiny_unet_cfg, opt, schedule, batch)
    assert all(np.isfinite(losses))
    assert min(losses[-3:]) < losses[0]
    assert bundle.schedule_free == (opt.name == "schedulefree_adamw")
    assert (bundle.scheduler is None) == bundle.schedule_free


# A skipped step (non-finite gradients) makes torch warn that the LR schedule stepped alone.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_grad_scaler_path_unscales_before_clipping_and_skips_overflow(tiny_store, tiny_unet_cfg):
    # The fp16 (CUDA) recipe's loss scaling, exercised on CPU: a power-of-two scale is exact,
    # so scaled backward + unscale + clip + step must equal the unscaled step; non-finite
    # gradients must skip the step (weights untouched) and halve the scale.
    batch = _batch(tiny_store, tiny_unet_cfg)
    opt, schedule = OptimizerConfig(lr=3e-3), ScheduleConfig(name="constant")
    plain, _, _, plain_losses = _train(tiny_unet_cfg, opt, schedule, batch, steps=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    scaled, _, _, losses = _train(tiny_unet_cfg, opt, schedule, batch, steps=3, scaler=scaler)
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert scaler.get_scale() == 2.0**12

    # An fp16 overflow, simulated by an infinite input voxel: non-finite gradients.
    x, y = batch
    x = x.copy()
    x[0, 0, 0, 0, 0] = np.inf
    overflow = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    model, _, before, _ = _train(tiny_unet_cfg, opt, schedule, (x, y), steps=1, scaler=overflow)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert overflow.get_scale() == 2.0**11


def test_schedulefree_eval_mode_swaps_to_averaged_weights(tiny_store, tiny_unet_cfg):
    batch = _batch(tiny_store, tiny_unet_cfg)
    model, bundle, _, _ = _train(
        tiny_unet_cfg, OptimizerConfig(name="schedulefree_adamw", lr=3e-3), ScheduleConfig(), batch
    )
    eval_w = [p.detach().clone() for p in model.parameters()]
    bundle.train_mode()
    train_w = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(eval_w, train_w, strict=True))
    bundle.eval_mode()
    assert all(
        torch.allclose(a, p, atol=1e-6) for a, p in zip(eval_w, model.parameters(), strict=True)
    )


def test_frozen_groups_stay_bit_identical(tiny_store, tiny_unet_cfg):
    batch = _batch(tiny_store, tiny_unet_cfg)
    model, bundle, before, _ = _train(
        tiny_unet_cfg, OptimizerConfig(lr=1e-2), ScheduleConfig(), batch, frozen=["stem", "enc*"]
    )
    assert {g["name"] for g in bundle.optimizer.param_groups}.isdisjoint({"stem", "enc0", "enc1"})
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, tiny_unet_cfg)
    state = model.state_dict()
    for group, params in groups.items():
        for p in params:
            same = torch.equal(state[names[id(p)]], before[names[id(p)]])
            if group in ("stem", "enc0", "enc1"):
                assert same, (group, names[id(p)])
            elif group in ("dec0", "head"):
                assert not same, (group, names[id(p)])


def test_group_learning_rates_keep_their_ratio(tiny_unet_cfg):
    model = build_model(tiny_unet_cfg)
    opt = OptimizerConfig(lr=1e-4, group_lr={"stem": 1e-6, "enc0": 1e-6})
    bundle = build_optimizer(
        model,
        tiny_unet_cfg,
        opt,
        ScheduleConfig(warmup_epochs=1),
        total_steps=20,
        steps_per_epoch=10,
    )
    lrs = bundle.lrs()
    assert lrs["lr/stem"] == pytest.approx(1e-6 / 11)  # warmup step 0: 1/(warmup+1)
    assert lrs["lr/dec0"] == pytest.approx(1e-4 / 11)
    for _ in range(15):
        bundle.optimizer.step()
        bundle.scheduler.step()
    lrs = bundle.lrs()
    assert lrs["lr/dec0"] / lrs["lr/stem"] == pytest.approx(100)


def test_lr_factor_shapes():
    cos = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 10, 4, cos) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, 10, 4, cos) == pytest.approx(1.0)
    assert lr_factor(10, 10, 4, cos) == pytest.approx(0.1)
    assert lr_factor(10, 10, 0, ScheduleConfig(name="poly")) == pytest.approx(0.0)
    assert lr_factor(5, 10, 0, ScheduleConfig(name="constant")) == 1.0


def test_init_weights_copies_matching_state_and_rejects_other_models(tiny_unet_cfg):
    torch.manual_seed(1)
    src = build_model(tiny_unet_cfg)
    dst = build_model(tiny_unet_cfg)
    assert init_weights(dst, tiny_unet_cfg, src.state_dict()) == "copy"
    assert all(
        torch.equal(a, b)
        for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    other = tiny_unet_cfg.model_copy(update={"deep_supervision": False})
    with pytest.raises(ValueError, match="does not fit"):
        init_weights(build_model(other), other, src.state_dict())


def test_init_weights_upkerns_a_k3_source_into_a_k5_model():
    from bratslab.models.config import ModelConfig

    def cfg(k):
        return ModelConfig(
            arch="mednext",
            mednext={
                "size": None,
                "blocks": [1, 1, 1],
                "expansion": 2,
                "kernel_size": k,
                "init_filters": 4,
            },
        )

    src = build_model(cfg(3)).state_dict()
    dst = build_model(cfg(5))
    assert init_weights(dst, cfg(5), src) == "upkern"
    out = dst.state_dict()
    grown = [k for k in src if src[k].shape != out[k].shape]
    assert grown and all(out[k].shape[2:] == (5, 5, 5) for k in grown)
    assert all(torch.equal(src[k], out[k]) for k in src if k not in grown)
