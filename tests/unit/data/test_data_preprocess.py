"""Each preprocessing step (values, shapes), crop/pad inverse, meta layout and resumability."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bratslab.config import ConfigError, validate
from bratslab.data.discovery import discover_cases
from bratslab.data.labels import from_store_labels
from bratslab.data.preprocess import (
    CaseInvalid,
    foreground_bbox,
    outputs_complete,
    preprocess_case,
    restore_to_source,
    to_store_space,
    write_case,
)
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.validate import file_hashes

CID = "BraTS-GLI-00001-000"


def _case(cases, layout="brats2023", **kw):
    cid = CID if layout == "brats2023" else "BraTS2021_00001"
    folder = cases.write(cid, layout, **kw)
    (case,) = discover_cases(folder.parent)
    return case, folder


def _src(folder, key, layout="brats2023"):
    from bratslab.data.layout import case_file_name

    return np.asarray(nib.load(folder / case_file_name(folder.name, key, layout)).dataobj)


def test_foreground_bbox_is_tight():
    fg = np.zeros((10, 12, 14), bool)
    fg[2, 3, 4] = fg[6, 9, 5] = True
    assert foreground_bbox(fg) == ([2, 3, 4], [7, 10, 6])


def test_stack_crop_and_channel_order(cases):
    case, folder = _case(cases)
    cfg = PreprocessConfig(zscore=False, min_size=0, dtype="float32")
    pre = preprocess_case(case, cfg)
    m = pre.meta
    t1n = _src(folder, "t1n")
    fg = np.zeros(t1n.shape, bool)
    for k in ("t1n", "t1c", "t2w", "t2f"):
        fg |= _src(folder, k) != 0
    start, end = foreground_bbox(fg)
    assert (m.bbox_start, m.bbox_end) == (start, end)
    box = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
    assert pre.x.shape == (5, *[e - s for s, e in zip(start, end, strict=True)])
    for c, k in enumerate(("t1n", "t1c", "t2w", "t2f")):
        np.testing.assert_array_equal(pre.x[c], _src(folder, k)[box].astype(np.float32))
    np.testing.assert_array_equal(pre.x[4], fg[box])  # step 6: mask channel
    assert m.channels == ["t1n", "t1c", "t2w", "t2f", "mask"]


def test_no_crop_keeps_full_volume(cases):
    case, _ = _case(cases)
    pre = preprocess_case(case, PreprocessConfig(crop_foreground=False, min_size=0))
    assert pre.x.shape == (5, 40, 44, 32)
    assert (pre.meta.bbox_start, pre.meta.bbox_end) == ([0, 0, 0], [40, 44, 32])


def test_zscore_over_nonzero_voxels_background_stays_zero(cases):
    case, folder = _case(cases)
    pre = preprocess_case(case, PreprocessConfig(min_size=0, dtype="float32"))
    x = pre.x
    for c, k in enumerate(("t1n", "t1c", "t2w", "t2f")):
        src = _src(folder, k).astype(np.float64)
        nz = x[4] > 0
        vals = x[c][nz]
        assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1) < 1e-4
        assert (x[c][~nz] == 0).all()
        ref = src[src != 0]
        assert pre.meta.intensity[k]["mean"] == pytest.approx(ref.mean(), rel=1e-9)
        assert pre.meta.intensity[k]["std"] == pytest.approx(ref.std(), rel=1e-9)


def test_percentile_rescale_range(cases):
    case, _ = _case(cases)
    cfg = PreprocessConfig(percentile_rescale=True, zscore=False, min_size=0, dtype="float32")
    x = preprocess_case(case, cfg).x
    nz = x[4] > 0
    for c in range(4):
        vals = x[c][nz]
        assert vals.min() == 0.0 and vals.max() == pytest.approx(255.0)
        # About 2 % of the brain voxels sit at each clip bound (ties of integer data add a bit).
        assert 0.015 < np.mean(vals >= 254.99) < 0.05
        assert 0.015 < np.mean(vals <= 0.01) < 0.05
        assert (x[c][~nz] == 0).all()


def test_percentile_then_zscore(cases):
    case, _ = _case(cases)
    x = preprocess_case(case, PreprocessConfig(percentile_rescale=True, min_size=0)).x
    vals = x[0][x[4] > 0].astype(np.float64)
    assert abs(vals.mean()) < 1e-2 and abs(vals.std() - 1) < 1e-2


def test_symmetric_padding_to_min_size(cases):
    case, _ = _case(cases)
    pre = preprocess_case(case, PreprocessConfig(min_size=[48, 40, 37]))
    m = pre.meta
    crop = [e - s for s, e in zip(m.bbox_start, m.bbox_end, strict=True)]
    for ax in range(3):
        target = max(crop[ax], [48, 40, 37][ax])
        assert m.shape[ax] == target
        assert m.pad_before[ax] + m.pad_after[ax] == target - crop[ax]
        assert 0 <= m.pad_after[ax] - m.pad_before[ax] <= 1
    assert pre.x.shape == (5, *m.shape) and pre.y.shape == (1, *m.shape)
    # The padding is zeros in every channel, the mask included.
    assert (pre.x[:, : m.pad_before[0]] == 0).all()
    assert (pre.x[:, m.shape[0] - m.pad_after[0] :] == 0).all()


def test_optional_mask_and_dtype(cases):
    case, _ = _case(cases)
    pre = preprocess_case(case, PreprocessConfig(foreground_channel=False, dtype="float32"))
    assert pre.x.shape[0] == 4 and pre.x.dtype == np.float32
    x16 = preprocess_case(case, PreprocessConfig(min_size=0)).x
    x32 = preprocess_case(case, PreprocessConfig(min_size=0, dtype="float32")).x
    assert x16.dtype == np.float16
    np.testing.assert_array_equal(x16, x32.astype(np.float16))  # mask channel included
    assert set(np.unique(x16[4])) == {0.0, 1.0}


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_labels_mapped_to_store_convention_and_restored_exactly(cases, layout):
    case, folder = _case(cases, layout)
    pre = preprocess_case(case, PreprocessConfig(min_size=64))
    assert pre.y.dtype == np.uint8 and set(np.unique(pre.y)) <= {0, 1, 2, 3}
    src = _src(folder, "seg", layout)
    et = 4 if layout == "brats2021" else 3
    assert pre.meta.et_label == et
    assert pre.meta.label_voxels["3"] == int((src == et).sum())
    back = from_store_labels(restore_to_source(pre.y[0], pre.meta), et)
    np.testing.assert_array_equal(back, src)


def test_restore_is_inverse_of_crop_and_pad(cases):
    case, _ = _case(cases)
    pre = preprocess_case(case, PreprocessConfig(min_size=[64, 30, 50]))
    m = pre.meta
    rng = np.random.default_rng(0)
    src = rng.random((3, *m.original_shape)).astype(np.float32)
    inside = np.zeros(m.original_shape, bool)
    inside[tuple(slice(s, e) for s, e in zip(m.bbox_start, m.bbox_end, strict=True))] = True
    stored = to_store_space(src, m)
    assert stored.shape == (3, *m.shape)
    back = restore_to_source(stored, m)
    assert back.shape == (3, *m.original_shape) and back.dtype == np.float32
    np.testing.assert_array_equal(back[:, inside], src[:, inside])
    assert (back[:, ~inside] == 0).all()
    with pytest.raises(ValueError, match="spatial shape"):
        restore_to_source(stored[..., :-1], m)
    # Works from the JSON dict as well.
    np.testing.assert_array_equal(restore_to_source(stored, m.model_dump()), back)


def test_meta_records_geometry_and_inputs(cases):
    case, folder = _case(cases, spacing=(0.9, 0.9, 3.0))
    pre = preprocess_case(case, PreprocessConfig(min_size=0))
    m = pre.meta
    img = nib.load(folder / f"{CID}-t1n.nii.gz")
    np.testing.assert_allclose(m.affine_array(), img.affine)
    assert m.zooms == pytest.approx([0.9, 0.9, 3.0])
    assert m.header().get_data_shape() == (40, 44, 32)
    assert m.layout == "brats2023" and m.cohort == "GLI" and m.has_label
    assert set(m.files) == {"t1n", "t1c", "t2w", "t2f", "seg"}
    assert m.files["seg"]["sha256"] == file_hashes(case)["seg"]
    np.testing.assert_array_equal(
        m.meta_array(), np.array([m.bbox_start, m.bbox_end, m.original_shape], dtype=np.int64)
    )


def test_write_case_and_outputs_complete(cases, tmp_path):
    case, folder = _case(cases)
    cfg = PreprocessConfig(min_size=32)
    pre = preprocess_case(case, cfg)
    out = tmp_path / "store"
    write_case(out, pre)
    assert np.load(out / f"{CID}_meta.npy").shape == (3, 3)
    meta_json = json.loads((out / f"{CID}_meta.json").read_text())
    assert meta_json["id"] == CID and "pad_before" in meta_json
    np.testing.assert_array_equal(np.load(out / f"{CID}_x.npy"), pre.x)
    hashes = file_hashes(case)
    assert outputs_complete(out, case, cfg, hashes) is not None
    # Another preprocessing setting, a changed input or a truncated array: not complete.
    assert outputs_complete(out, case, PreprocessConfig(min_size=33), hashes) is None
    assert outputs_complete(out, case, cfg, {**hashes, "t1n": "0" * 64}) is None
    xp = out / f"{CID}_x.npy"
    xp.write_bytes(xp.read_bytes()[:-10])
    assert outputs_complete(out, case, cfg, hashes) is None


def test_unlabelled_case_has_no_y(cases):
    case, _ = _case(cases, with_seg=False)
    pre = preprocess_case(case)
    assert pre.y is None and not pre.meta.has_label and pre.meta.label_voxels == {}


def test_invalid_case_raises_with_every_reason(cases):
    case, folder = _case(cases)
    (folder / f"{CID}-t1n.nii.gz").write_bytes(b"")
    with pytest.raises(CaseInvalid, match="empty file") as ei:
        preprocess_case(case)
    assert ei.value.failures[0].case == CID


def test_config_validation_names_bad_keys():
    with pytest.raises(ConfigError, match="min_size"):
        validate(PreprocessConfig, {"min_size": [1, 2]})
    with pytest.raises(ConfigError, match="unknown key"):
        validate(PreprocessConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="percentile_low must be below"):
        validate(PreprocessConfig, {"percentile_low": 50, "percentile_high": 40})
    assert PreprocessConfig(min_size=96).min_size == [96, 96, 96]


def test_float16_cast_identical_with_and_without_fast_cast(cases):
    """The torch fast path for the float16 cast gives the very bytes numpy gives."""
    pytest.importorskip("torch")
    case, _ = _case(cases)
    x_np = preprocess_case(case, PreprocessConfig(min_size=48), fast_cast=False).x
    x_t = preprocess_case(case, PreprocessConfig(min_size=48), fast_cast=True).x
    assert x_np.dtype == np.float16
    np.testing.assert_array_equal(x_np.view(np.uint16), x_t.view(np.uint16))


def test_fast_cast_is_the_callers_choice_not_whether_torch_is_loaded(cases, monkeypatch):
    """A loaded torch (here a stand-in that fails when used) is left alone without fast_cast."""
    import sys

    class Unusable:
        def __getattr__(self, name):
            raise AssertionError(f"torch.{name} used without fast_cast")

    case, _ = _case(cases)
    monkeypatch.setitem(sys.modules, "torch", Unusable())
    x = preprocess_case(case, PreprocessConfig(min_size=48)).x
    assert x.dtype == np.float16
    with pytest.raises(AssertionError, match="used without fast_cast"):
        preprocess_case(case, PreprocessConfig(min_size=48), fast_cast=True)


def test_one_run_preprocess_and_no_import_cycle():
    """``run_preprocess`` lives in preprocess_tasks only; preprocess never imports it."""
    import subprocess
    import sys

    from bratslab.data import preprocess, preprocess_tasks

    assert not hasattr(preprocess, "run_preprocess")
    assert callable(preprocess_tasks.run_preprocess)
    code = (
        "import sys, bratslab.data.preprocess, bratslab.data.validate, bratslab.data.nifti; "
        "assert 'bratslab.data.preprocess_tasks' not in sys.modules; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
