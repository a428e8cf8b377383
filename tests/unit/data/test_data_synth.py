"""The synthetic dataset: layouts, contrasts, nested tumours, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bratslab.data.discovery import discover_cases
from bratslab.data.layout import MODALITIES
from bratslab.data.synth import synthesize_case, synthesize_dataset
from bratslab.data.synth_scanner import shift_draw

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
    with pytest.raises(ValueError, match="shift must be one of"):
        synthesize_dataset(tmp_path, 1, shape=SHAPE, shift="extreme")


# --- the domain-shift validation set -------------------------------------------------------


def _array_digest(images, seg) -> str:
    h = hashlib.sha256()
    for m in MODALITIES:
        h.update(np.ascontiguousarray(images[m]).tobytes())
    h.update(np.ascontiguousarray(seg).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("seed", "shape", "spacing", "digest"),
    [  # the clean phantom's voxels, pinned before the shift option existed
        (
            (3, 0),
            (48, 52, 40),
            (1.0, 1.0, 1.0),
            "17b46e9b76ec89e9b1a4bcef93d39ec8b3e936bab551492f8fb7654c847e1f45",
        ),
        (
            (5, 2),
            (40, 44, 32),
            (1.0, 1.0, 1.5),
            "5bfd06ddd97830ac24bb75d79d829f486ec9206a08ef232855ab6ef2589e90bf",
        ),
    ],
)
def test_shift_none_is_the_clean_phantom(seed, shape, spacing, digest):
    assert _array_digest(*synthesize_case(seed, shape, spacing, 3)[:2]) == digest
    assert _array_digest(*synthesize_case(seed, shape, spacing, 3, shift="none")[:2]) == digest


def test_shift_none_dataset_bytes_and_shifted_determinism(tmp_path):
    synthesize_dataset(tmp_path / "plain", 2, seed=4, shape=SHAPE)
    synthesize_dataset(tmp_path / "none", 2, seed=4, shape=SHAPE, shift="none")
    synthesize_dataset(tmp_path / "s1", 2, seed=4, shape=SHAPE, shift="strong")
    synthesize_dataset(tmp_path / "s2", 2, seed=4, shape=SHAPE, shift="strong")
    synthesize_dataset(tmp_path / "m", 2, seed=4, shape=SHAPE, shift="mild")
    assert _digest(tmp_path / "plain") == _digest(tmp_path / "none")
    assert _digest(tmp_path / "s1") == _digest(tmp_path / "s2")
    assert _digest(tmp_path / "s1") != _digest(tmp_path / "none")
    assert _digest(tmp_path / "m") not in (_digest(tmp_path / "none"), _digest(tmp_path / "s1"))


@pytest.mark.parametrize("shift", ["mild", "strong"])
def test_shifted_cases_keep_valid_labels_and_brain(shift):
    for i in range(3):
        clean, seg0, _ = synthesize_case((2, i), (64, 64, 48), et_label=4)
        images, seg, affine = synthesize_case((2, i), (64, 64, 48), et_label=4, shift=shift)
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg == 2).any()
        # Same anatomy and main tumours: satellites only add tumour voxels.
        assert ((seg0 > 0) <= (seg > 0)).all()
        brain = clean["t1n"] > 0
        for m in MODALITIES:
            assert images[m].dtype == np.int16 and ((images[m] > 0) == brain).all()
            assert not np.array_equal(images[m], clean[m])


def _et_contrast(images, seg) -> float:
    """Mean T1c in ET over mean T1c in healthy brain."""
    healthy = (images["t1n"] > 0) & (seg == 0)
    return images["t1c"][seg == 3].mean() / images["t1c"][healthy].mean()


def test_strong_shift_changes_intensities_the_scanner_way():
    n_dim = n_flat = 0
    for i in range(4):
        clean, seg, _ = synthesize_case((6, i), (80, 80, 64), et_label=3)
        shifted, _, _ = synthesize_case((6, i), (80, 80, 64), et_label=3, shift="strong")
        brain = clean["t1n"] > 0
        for m in MODALITIES:
            # Per-case and per-modality gain: the median brain intensity moves.
            ratio = np.median(shifted[m][brain]) / np.median(clean[m][brain])
            n_flat += abs(np.log(ratio)) < 0.05
        if (seg == 3).any():  # dim enhancement: ET's T1c contrast shrinks
            n_dim += _et_contrast(shifted, seg) < _et_contrast(clean, seg) - 0.2
    assert n_flat <= 4  # of 16 modality gains, most moved
    assert n_dim >= 1


def test_satellites_add_connected_components():
    n_clean = n_strong = 0
    for i in range(4):
        seed = (9, i)
        _, seg0, _ = synthesize_case(seed, (96, 96, 72), et_label=3)
        _, seg1, _ = synthesize_case(seed, (96, 96, 72), et_label=3, shift="strong")
        assert shift_draw(seed, "strong").satellites >= 2
        n_clean += ndimage.label(seg0 > 0)[1]
        n_strong += ndimage.label(seg1 > 0)[1]
    assert n_strong >= n_clean + 4


def test_thick_slices_remove_high_frequencies_along_one_axis():
    seed, shape = (12, 0), (72, 72, 60)
    axis = shift_draw(seed, "strong").axis
    clean, _, _ = synthesize_case(seed, shape, et_label=3)
    shifted, _, _ = synthesize_case(seed, shape, et_label=3, shift="strong")

    def along_over_across(img):
        """Mean |first difference| along ``axis`` over the mean across the other two axes,
        inside the brain (eroded, so the brain's edge does not count)."""
        inner = ndimage.binary_erosion(img > 0, iterations=3)
        v = img.astype(float)
        diffs = []
        for a in range(3):
            d = np.abs(np.diff(v, axis=a))
            keep = np.delete(inner, -1, axis=a) & np.delete(inner, 0, axis=a)
            diffs.append(d[keep].mean())
        others = [diffs[a] for a in range(3) if a != axis]
        return diffs[axis] / np.mean(others)

    for m in MODALITIES:
        assert along_over_across(shifted[m]) < 0.7 * along_over_across(clean[m])
    # Mild shift: 2 mm slices along its own drawn axis smooth that axis less, but still.
    axis = shift_draw(seed, "mild").axis
    mild, _, _ = synthesize_case(seed, shape, et_label=3, shift="mild")
    assert along_over_across(mild["t2f"]) < 0.85 * along_over_across(clean["t2f"])


def test_cli_shift_option_writes_a_shifted_dataset(tmp_path):
    from typer.testing import CliRunner

    from bratslab.app.main import app

    args = ["data", "synth", "--cases", "1", "--shape", "32", "32", "24"]
    for shift in ("none", "strong"):
        result = CliRunner().invoke(app, [*args, str(tmp_path / shift), "--shift", shift])
        assert result.exit_code == 0, result.output
    clean, shifted = (sorted((tmp_path / s).rglob("*t1c.nii.gz"))[0] for s in ("none", "strong"))
    assert clean.read_bytes() != shifted.read_bytes()
    bad = CliRunner().invoke(app, [*args, str(tmp_path / "x"), "--shift", "extreme"])
    assert bad.exit_code == 2


def test_cli_sets_of_different_seeds_never_share_a_case_id(tmp_path):
    """The README's held-out set (`--seed 1`) never reuses a training id (`--seed 0`), so
    evaluating it against the wrong folder cannot pair a prediction with a namesake."""
    from typer.testing import CliRunner

    from bratslab.app.main import app

    runner = CliRunner()
    ids = {}
    for seed, extra in (("0", []), ("1", []), ("1", ["--start-id", "7"])):
        out = tmp_path / f"s{seed}{''.join(extra)}"
        args = ["data", "synth", str(out), "-n", "2", "--seed", seed, "--shape", "16", "16", "16"]
        r = runner.invoke(app, args + extra)
        assert r.exit_code == 0, r.output
        ids[out.name] = sorted(p.name for p in out.iterdir())
    assert ids["s0"] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert ids["s1"] == ["BraTS-GLI-01000-000", "BraTS-GLI-01001-000"]
    assert ids["s1--start-id7"] == ["BraTS-GLI-00007-000", "BraTS-GLI-00008-000"]
    r = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "-n", "2", "--start-id", "99999"])
    assert r.exit_code == 2 and "do not fit" in r.output
