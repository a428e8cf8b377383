"""The export path puts store-space predictions back exactly onto the source voxel grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bratslab.data.config import PreprocessConfig
from bratslab.data.discovery import discover_cases
from bratslab.data.labels import labels_to_regions, probabilities_to_labels
from bratslab.data.preprocess import preprocess_case, restore_to_source
from bratslab.data.synth import synthesize_dataset
from bratslab.inference.nifti_out import write_map, write_nifti


@pytest.mark.parametrize(
    ("layout", "spacing"),
    [
        ("brats2021", (1.0, 1.0, 1.0)),
        ("brats2023", (1.0, 1.0, 1.0)),
        ("brats2023", (0.8, 1.2, 2.5)),
    ],
)
@pytest.mark.parametrize("output", ["regions", "labels"])
def test_ground_truth_round_trip(tmp_path, layout, spacing, output):
    synthesize_dataset(tmp_path / "raw", 1, layout=layout, shape=(48, 40, 32), spacing=spacing)
    (case,) = discover_cases(tmp_path / "raw")
    src = nib.load(case.seg)
    src_seg = np.asarray(src.dataobj)
    assert case.et_label in np.unique(src_seg)  # the synthetic case has ET in its convention
    # Pad to 64³ so the store array has both a crop and padding to undo.
    pre = preprocess_case(case, PreprocessConfig(min_size=[64, 64, 64]))
    assert pre.x.shape[1:] != src_seg.shape

    # "Perfect" probabilities in store space, in the model's output format.
    if output == "regions":
        probs = labels_to_regions(pre.y).astype(np.float32)
    else:
        probs = np.eye(4, dtype=np.float32)[pre.y[0]].transpose(3, 0, 1, 2)
    labels = probabilities_to_labels(probs, output, case.et_label)
    restored = restore_to_source(labels, pre.meta)
    out = tmp_path / "pred" / f"{case.id}.nii.gz"
    write_nifti(out, restored, pre.meta.affine_array(), pre.meta.header())

    back = nib.load(out)
    assert back.shape == src.shape
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    np.testing.assert_allclose(back.header.get_zooms()[:3], spacing, atol=1e-6)
    assert np.array_equal(np.asarray(back.dataobj), src_seg)
    assert not list((tmp_path / "pred").glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_probability_maps_are_channels_last_in_the_source_grid(tmp_path, dtype):
    affine = np.diag([0.8, 1.2, 2.5, 1.0])
    header = nib.Nifti1Header()
    values = np.random.default_rng(0).random((3, 6, 5, 4)).astype(np.float32)
    out = tmp_path / "c_prob.nii.gz"
    write_map(out, values, affine, header, dtype)
    back = nib.load(out)
    assert back.shape == (6, 5, 4, 3)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    atol = 0.5 / 255 + 1e-6 if dtype == "uint8" else 1e-7
    np.testing.assert_allclose(back.get_fdata(), np.moveaxis(values, 0, -1), atol=atol)
    with pytest.raises(ValueError, match="float16"):
        write_map(out, values, affine, header, "float16")
