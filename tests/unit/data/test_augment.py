"""Training-patch augmentation: each MONAI transform on/off, what it may touch, one affine
resampling, determinism, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from monai import transforms as T
from pydantic import ValidationError
from scipy import ndimage

from bratslab.data.augment import apply_augment, build_augment, stress_case
from bratslab.data.augment_config import AugmentConfig

N = 24
# Every probability off (the scanner-shift ones are off by default).
OFF = dict(flip_prob=0, rotate_prob=0, scale_prob=0, noise_prob=0, intensity_prob=0, gamma_prob=0)
INTENSITY = [
    ("noise_prob", {}),
    ("intensity_prob", {}),
    ("gamma_prob", {}),
    ("gamma_invert_prob", {}),
    ("bias_field_prob", {}),
    ("rician_prob", {}),
    ("blur_prob", {}),
    ("lowres_prob", {"lowres_zoom": (0.4, 0.6)}),  # thick slices along one random axis
    ("lowres_prob", {"lowres_zoom": (0.4, 0.6), "lowres_axes": "all"}),
    ("brightness_prob", {}),
    ("channel_scale_prob", {}),
    ("contrast_prob", {}),
    ("histogram_shift_prob", {}),
]
SPATIAL = [("flip_prob", {}), ("rotate_prob", {}), ("scale_prob", {"scale_range": 0.3})]
LESION = [("lesion_paste_prob", {}), ("lesion_contrast_prob", {})]


def _ids(cases):
    return [k + ("-" + e["lowres_axes"] if "lowres_axes" in e else "") for k, e in cases]


def only(key: str, **extra) -> AugmentConfig:
    """Every transform off but ``key`` (probability 1)."""
    return AugmentConfig(**{**OFF, key: 1.0, **extra})


@pytest.fixture
def patch():
    """A z-scored-like patch ``x`` (5, N, N, N) (negative values in the brain, 0 outside, mask
    last) and its labels ``y`` (1, N, N, N): an off-centre, asymmetric lesion."""
    rng = np.random.default_rng(0)
    g = np.mgrid[0:N, 0:N, 0:N].astype(np.float32) / N
    mask = (((g - 0.5) ** 2).sum(0) < 0.16).astype(np.float32)
    image = np.stack([np.sin(6 * g[0] + k) + g[1] - g[2] * k for k in range(4)])
    image = (image + 0.2 * rng.standard_normal(image.shape)).astype(np.float32) * mask
    y = np.zeros((1, N, N, N), np.uint8)
    y[0, 8:16, 6:12, 10:18] = 2
    y[0, 10:14, 7:10, 12:16] = 3
    y[0, 11:13, 8:9, 13:15] = 1
    x = np.concatenate([image, mask[None]])
    return x, y


def run(cfg: AugmentConfig, patch, seed: int = 0):
    return apply_augment(build_augment(cfg, seed), *patch)


@pytest.mark.parametrize(("key", "extra"), INTENSITY, ids=_ids(INTENSITY))
def test_intensity_transform_applied_at_1_and_touches_only_the_image(key, extra, patch):
    x, y = patch
    xa, ya = run(only(key, **extra), patch)
    assert not np.array_equal(xa[:-1], x[:-1])
    np.testing.assert_array_equal(xa[-1], x[-1])  # the foreground-mask channel
    np.testing.assert_array_equal(ya, y)


@pytest.mark.parametrize(("key", "extra"), SPATIAL, ids=_ids(SPATIAL))
def test_spatial_transform_applied_at_1_and_moves_everything(key, extra, patch):
    x, y = patch
    xa, ya = run(only(key, **extra), patch)
    assert not np.array_equal(xa[:-1], x[:-1])
    assert not np.array_equal(xa[-1], x[-1]) or key == "flip_prob"  # the mask is symmetric
    assert not np.array_equal(ya, y)


ALL = INTENSITY + SPATIAL + LESION


@pytest.mark.parametrize(("key", "extra"), ALL, ids=_ids(ALL))
def test_probability_0_leaves_the_patch_alone(key, extra, patch):
    x, y = patch
    cfg = AugmentConfig(**{**OFF, key: 0.0, **extra})
    assert build_augment(cfg, 0) is None
    xa, ya = run(cfg, patch)
    np.testing.assert_array_equal(xa, x)
    np.testing.assert_array_equal(ya, y)


def test_all_intensity_transforms_together_keep_mask_and_labels(patch):
    x, y = patch
    cfg = AugmentConfig(**{**OFF, **{k: 1.0 for k, _ in INTENSITY}}, lowres_zoom=(0.5, 0.7))
    xa, ya = run(cfg, patch, seed=4)
    assert not np.array_equal(xa[:-1], x[:-1])
    np.testing.assert_array_equal(xa[-1], x[-1])
    np.testing.assert_array_equal(ya, y)


@pytest.mark.parametrize("key", ["bias_field_prob", "rician_prob"])
def test_magnitude_transforms_keep_background_and_sign(key, patch):
    """Bias field and Rician noise act on the brain as a magnitude image: voxels outside the
    mask keep their values, and dark (negative) z-scores are not rectified to positive ones."""
    x, y = patch
    cfg = only(key, rician_std=0.05, bias_field_coeff=0.05)
    xa, _ = run(cfg, patch, seed=1)
    brain = x[-1] > 0.5
    np.testing.assert_array_equal(xa[:-1][:, ~brain], x[:-1][:, ~brain])
    dark = brain & (x[0] < -0.5)
    assert dark.any() and (xa[0][dark] < 0).mean() > 0.9
    # Stores without a mask channel: the loader adds an all-zero one; the brain is then the
    # non-zero voxels, and zero background stays exactly zero.
    nomask = x.copy()
    nomask[-1] = 0
    xb, _ = apply_augment(build_augment(cfg, 1), nomask, y)
    outside = ~(x[:-1] != 0).any(0)
    assert (xb[:-1][:, outside] == 0).all() and not np.array_equal(xb[:-1], nomask[:-1])


def _leaves(t) -> list:
    inner = getattr(t, "transforms", None)
    return [t] if inner is None else [leaf for s in inner for leaf in _leaves(s)]


def test_rotation_and_scaling_share_one_resampling(patch):
    compose = build_augment(AugmentConfig(**{**OFF, "rotate_prob": 0.2, "scale_prob": 0.2}), 0)
    leaves = _leaves(compose)
    assert not any(isinstance(t, T.RandRotated | T.RandZoomd) for t in leaves)
    (choice,) = compose.transforms  # one OneOf: exactly one branch runs per patch
    assert isinstance(choice, T.OneOf)
    np.testing.assert_allclose(choice.weights, [0.04, 0.16, 0.16, 0.64])
    assert [type(t) for t in choice.transforms] == [T.RandAffined] * 3 + [T.Identityd]


def test_affine_moves_image_mask_and_labels_with_the_same_geometry(patch):
    x, y = patch
    # Channel 0 carries the labels as intensities: bilinear image and nearest labels must agree.
    x = x.copy()
    x[0] = y[0]
    cfg = AugmentConfig(**{**OFF, "rotate_prob": 1.0, "scale_prob": 1.0, "scale_range": 0.2})
    for seed in range(3):
        xa, ya = apply_augment(build_augment(cfg, seed), x, y)
        assert not np.array_equal(ya, y)
        assert set(np.unique(ya)) <= {0, 1, 2, 3}  # nearest neighbour: no blended label values
        assert (np.rint(xa[0]) == ya[0]).mean() > 0.97
        moved_fg = ya[0] > 0
        assert (xa[0][moved_fg] > 0.5).mean() > 0.9
        # The mask channel moved with the image: brain stays where the image is non-zero.
        assert (xa[-1] > 0.5).sum() > 0.5 * (x[-1] > 0.5).sum()


def everything(**extra) -> AugmentConfig:
    keys = {k: 1.0 for k, _ in INTENSITY + SPATIAL}
    return AugmentConfig(**keys, scale_range=0.2, **extra)


@pytest.mark.parametrize("axes", ["one", "all"])
def test_full_pipeline_shapes_dtypes_and_values(axes, patch):
    x, y = patch
    xa, ya = run(everything(lowres_axes=axes), patch, seed=2)
    assert xa.shape == x.shape and xa.dtype == np.float32
    assert ya.shape == y.shape and ya.dtype == np.uint8
    assert np.isfinite(xa).all()
    assert set(np.unique(ya)) <= {0, 1, 2, 3}
    assert set(np.unique(xa[-1])) <= {0.0, 1.0}


def test_same_seed_same_patches_other_seed_differs(patch):
    def stream(seed):
        compose = build_augment(everything(), seed)
        return [apply_augment(compose, *patch) for _ in range(2)]

    a, b, c = stream(7), stream(7), stream(8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][0], a[1][0])  # one stream, a new draw per patch


def test_config_keeps_old_keys_and_checks_ranges():
    old = AugmentConfig(
        flip_prob=0.5,
        rotate_prob=0.2,
        rotate_range_deg=30,
        scale_prob=0.2,
        scale_range=0.15,
        noise_prob=0.15,
        noise_std=0.1,
        intensity_prob=0.15,
        gamma_prob=0.15,
    )
    assert old.bias_field_prob == old.rician_prob == old.lowres_prob == 0  # new ones: off
    assert AugmentConfig(lowres_zoom=[0.33, 1.0]).lowres_zoom == (0.33, 1.0)  # YAML lists
    with pytest.raises(ValidationError, match="lowres_zoom"):
        AugmentConfig(lowres_zoom=(0.5, 2.0))
    with pytest.raises(ValidationError, match="gamma_range"):
        AugmentConfig(gamma_range=(1.5, 0.7))
    with pytest.raises(ValidationError, match="extra"):
        AugmentConfig(elastic_prob=0.2)


def test_histogram_shift_draws_one_monotone_curve_per_modality_over_the_brain(patch):
    """Each modality gets its own random curve: inside the brain the voxel order of a modality
    is kept (the curve is monotone) and its range too (the end points are fixed), while the
    modalities' curves differ; voxels outside the brain keep their values."""
    x, _ = patch
    xa, _ = run(only("histogram_shift_prob"), patch, seed=3)
    brain = x[-1] > 0.5
    np.testing.assert_array_equal(xa[:-1][:, ~brain], x[:-1][:, ~brain])
    ratios = []
    for c in range(4):
        before, after = x[c][brain], xa[c][brain]
        order = np.argsort(before, kind="stable")
        assert (np.diff(after[order]) >= -1e-5).all(), c  # monotone non-decreasing
        assert after.min() == pytest.approx(before.min(), abs=1e-5)
        assert after.max() == pytest.approx(before.max(), abs=1e-5)
        mid = (before > np.quantile(before, 0.4)) & (before < np.quantile(before, 0.6))
        ratios.append(float(np.mean(after[mid] - before[mid])))
    assert len({round(r, 4) for r in ratios}) == 4, ratios  # four different curves


def test_histogram_shift_points_are_checked():
    with pytest.raises(ValidationError, match="histogram_shift_points"):
        AugmentConfig(histogram_shift_points=(2, 5))
    with pytest.raises(ValidationError, match="histogram_shift_points"):
        AugmentConfig(histogram_shift_points=(8, 5))


def test_lesion_paste_adds_small_copies_of_the_tumour_inside_the_brain(patch):
    """Copies are smaller than the tumour, carry its labels, lie wholly in the brain apart from
    the tumour; the image changes only around them; the mask never changes."""
    x, y = patch
    tumour = y[0] > 0
    cfg = only("lesion_paste_prob", lesion_paste_zoom=(0.4, 0.6), lesion_paste_count=(2, 2))
    pasted = 0
    for seed in range(6):
        xa, ya = run(cfg, patch, seed=seed)
        np.testing.assert_array_equal(xa[-1], x[-1])
        np.testing.assert_array_equal(ya[0][tumour], y[0][tumour])  # the tumour is kept
        new = (ya[0] > 0) & ~tumour
        assert set(np.unique(ya[0][new])) <= {1, 2, 3}
        assert (x[-1][new] > 0.5).all()  # in the brain
        assert not (new & ndimage.binary_dilation(tumour)).any()  # clear of the tumour
        comps, n = ndimage.label(new, structure=np.ones((3, 3, 3)))
        sizes = ndimage.sum_labels(new, comps, range(1, n + 1))
        assert (sizes < tumour.sum() / 2).all()
        near = ndimage.binary_dilation(new, iterations=3)
        np.testing.assert_array_equal(xa[:-1][:, ~near], x[:-1][:, ~near])
        if n:
            assert not np.array_equal(xa[:-1][:, new], x[:-1][:, new])
        pasted += n
    assert pasted >= 6  # most draws find room for both copies


def test_lesion_contrast_scales_each_sub_region_against_the_normal_brain(patch):
    """Inside each sub-region a modality's difference from the normal brain's median is scaled
    by one factor (up to the smoothing at its edge); far from the tumour nothing changes; the
    labels and the mask stay put."""
    x, y = patch
    cfg = only("lesion_contrast_prob", lesion_contrast_range=(0.2, 0.6))
    xa, ya = run(cfg, patch, seed=2)
    np.testing.assert_array_equal(ya, y)
    np.testing.assert_array_equal(xa[-1], x[-1])
    tumour = y[0] > 0
    far = ~ndimage.binary_dilation(tumour, iterations=4)
    np.testing.assert_array_equal(xa[:-1][:, far], x[:-1][:, far])
    normal = (x[-1] > 0.5) & ~tumour
    core = ndimage.binary_erosion(y[0] == 2, iterations=1)  # ED away from its edges
    for c in range(4):
        ref = np.median(x[c][normal])
        f = (xa[c][core] - ref) / (x[c][core] - ref)
        assert 0.15 < np.median(f) < 0.65, c  # pulled towards the brain, by the drawn factor


def test_lesion_contrast_limited_to_enhancement_on_t1c(patch):
    """``lesion_contrast_labels=[et]``, ``_modalities=[t1c]`` (a contrast dose): only T1c
    changes, only at ET and its smoothed edge; inside the oedema away from ET, T1c keeps its
    values, and ET's contrast is scaled by the drawn factor."""
    x, y = patch
    cfg = only(
        "lesion_contrast_prob",
        lesion_contrast_range=(0.2, 0.6),
        lesion_contrast_labels=["et"],
        lesion_contrast_modalities=["t1c"],
    )
    xa, ya = run(cfg, patch, seed=2)
    np.testing.assert_array_equal(ya, y)
    t1c = 1  # channel order t1n, t1c, t2w, t2f
    others = [c for c in range(x.shape[0]) if c != t1c]
    np.testing.assert_array_equal(xa[others], x[others])
    et = y[0] == 3
    near_et = ndimage.binary_dilation(et, iterations=4)
    np.testing.assert_array_equal(xa[t1c][~near_et], x[t1c][~near_et])
    assert not np.array_equal(xa[t1c][et], x[t1c][et])
    normal = (x[-1] > 0.5) & (y[0] == 0)
    ref = np.median(x[t1c][normal])
    # ET is a thin rim here, so its voxels all sit at the smoothed edge: pulled towards the
    # brain, by less than the drawn factor at the rim's border.
    f = (xa[t1c][et] - ref) / (x[t1c][et] - ref)
    assert f.max() < 1 and 0.15 < np.median(f) < 0.85


def test_lesion_contrast_names_unknown_modalities_and_labels():
    with pytest.raises(ValidationError, match="lesion_contrast_modalities"):
        AugmentConfig(lesion_contrast_modalities=["t1ce"])
    with pytest.raises(ValidationError, match="lesion_contrast_labels"):
        AugmentConfig(lesion_contrast_labels=["core"])


def test_lesion_contrast_needs_tumour_and_checks_its_range(patch):
    x, y = patch
    empty = np.zeros_like(y)
    xa, _ = apply_augment(build_augment(only("lesion_contrast_prob"), 0), x, empty)
    np.testing.assert_array_equal(xa, x)
    with pytest.raises(ValidationError, match="lesion_contrast_range"):
        AugmentConfig(lesion_contrast_range=(0.0, 1.0))


def test_lesion_paste_needs_tumour_in_the_patch(patch):
    x, y = patch
    empty = np.zeros_like(y)
    xa, ya = apply_augment(build_augment(only("lesion_paste_prob"), 0), x, empty)
    np.testing.assert_array_equal(xa, x)
    np.testing.assert_array_equal(ya, empty)


def test_lesion_paste_count_is_checked():
    with pytest.raises(ValidationError, match="lesion_paste_count"):
        AugmentConfig(lesion_paste_count=(0, 2))
    with pytest.raises(ValidationError, match="lesion_paste_zoom"):
        AugmentConfig(lesion_paste_zoom=(0.6, 0.3))


@pytest.mark.parametrize("with_mask", [True, False])
def test_stress_case_is_seeded_adds_lesions_and_keeps_background_and_mask(patch, with_mask):
    """The post-processing fit's stress: small tumour copies join the labels, every modality
    changes inside the brain, background and the mask channel do not, and a seed gives the same
    case every time."""
    x, y = patch
    x = x if with_mask else x[:-1]
    (a, ya), (b, yb), (c, _) = (stress_case(x, y, s) for s in (7, 7, 8))
    assert a.shape == x.shape and a.dtype == np.float32 and ya.shape == y.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)
    tumour = y[0] > 0
    np.testing.assert_array_equal(ya[0][tumour], y[0][tumour])
    assert ((ya[0] > 0) & ~tumour).any()  # pasted lesions are in the reference
    brain = patch[0][-1] > 0.5
    for m in range(4):
        assert not np.allclose(a[m][brain], x[m][brain])
    np.testing.assert_array_equal(a[:4][:, ~brain], x[:4][:, ~brain])
    if with_mask:
        np.testing.assert_array_equal(a[-1], x[-1])
