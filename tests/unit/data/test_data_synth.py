"""The synthetic dataset: layouts, contrasts, nested tumours, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bratslab.data.layout import discover_cases
from bratslab.data.synth import synthesize_case, synthesize_dataset

SHAPE = (48, 52, 40)


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("layout", "names", "et"),
    [
        ("brats2023", ["-t1n", "-t1c", "-t2w", "-t2f", "-seg"], 3),
        ("brats2021", ["_t1", "_t1ce", "_t2", "_flair", "_seg"], 4),
    ],
)
def test_dataset_layout_files_and_labels(tmp_path, layout, names, et):
    folders = synthesize_dataset(tmp_path, 2, layout, seed=3, shape=SHAPE, unlabeled=1)
    assert [f.name for f in folders] == (
        ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
        if layout == "brats2023"
        else ["BraTS2021_00000", "BraTS2021_00001"]
    )
    assert sorted(p.name for p in folders[0].iterdir()) == sorted(
        f"{folders[0].name}{n}.nii.gz" for n in names
    )
    assert not any("seg" in p.name for p in folders[1].iterdir())  # the unlabelled one
    found = discover_cases(tmp_path)
    assert [c.layout for c in found] == [layout, layout]
    assert [c.has_label for c in found] == [True, False]
    seg_img = nib.load(found[0].seg)
    assert seg_img.shape == SHAPE
    labels = set(np.unique(np.asarray(seg_img.dataobj)))
    assert labels <= {0, 1, 2, et} and 2 in labels
    t1 = nib.load(found[0].files["t1n"])
    assert t1.get_data_dtype() == np.int16
    # BraTS-like orientation: x and y flipped, 1 mm.
    np.testing.assert_allclose(np.diag(t1.affine)[:3], [-1, -1, 1])
    assert nib.aff2axcodes(t1.affine) == ("L", "P", "S")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    synthesize_dataset(tmp_path / "a", 1, seed=7, shape=SHAPE)
    synthesize_dataset(tmp_path / "b", 1, seed=7, shape=SHAPE)
    synthesize_dataset(tmp_path / "c", 1, seed=8, shape=SHAPE)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_contrasts_are_distinct_and_plausible():
    images, seg, _ = synthesize_case((0, 1), (96, 96, 64), et_label=3)
    brain = images["t1n"] > 0
    for img in images.values():
        assert img.dtype == np.int16
        assert ((img > 0) == brain).all()  # one skull-stripped brain mask for all contrasts
    ed = seg == 2

    def mean(m, mask):
        return images[m][mask].mean()

    # Oedema is bright on FLAIR and T2, darker than brain on T1.
    assert mean("t2f", ed) > 1.3 * mean("t2f", brain & (seg == 0))
    assert mean("t2w", ed) > mean("t2w", brain & (seg == 0))
    assert mean("t1n", ed) < mean("t1n", brain & (seg == 0))
    if (seg == 3).any():  # enhancing rim is brightest on T1c
        assert mean("t1c", seg == 3) > 1.5 * mean("t1n", seg == 3) * (
            mean("t1c", brain) / mean("t1n", brain)
        )
    corr = np.corrcoef([images[m][brain].astype(float) for m in images])
    assert corr[np.triu_indices(4, 1)].max() < 0.95  # four different images, not one copy


def test_tumours_are_nested_and_varied():
    n_no_et = n_multi = 0
    for i in range(12):
        images, seg, _ = synthesize_case((11, i), (64, 64, 48), et_label=3)
        brain = images["t1n"] > 0
        wt = seg > 0
        assert wt.any()
        tc = (seg == 1) | (seg == 3)
        # The core lies inside the oedema: its one-voxel dilation stays in WT (or leaves the brain).
        assert not (ndimage.binary_dilation(tc) & ~wt & brain).any()
        if (seg == 3).any() and (seg == 1).any():
            # NCR sits inside the ET rim: NCR touches no oedema directly for most voxels.
            ncr = seg == 1
            assert (ndimage.binary_dilation(ncr) & (seg == 3)).any()
        n_no_et += not (seg == 3).any()
        n_multi += ndimage.label(wt)[1] > 1
    assert n_no_et >= 1 and n_multi >= 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        synthesize_dataset(tmp_path, 1, layout="brats2019")
    with pytest.raises(ValueError, match="unlabeled"):
        synthesize_dataset(tmp_path, 1, unlabeled=2)
    with pytest.raises(ValueError, match="shape"):
        synthesize_dataset(tmp_path, 1, shape=(8, 8, 8))
