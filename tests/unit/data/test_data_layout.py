"""Naming, modality synonyms, layouts and label conventions of BraTS releases."""

from __future__ import annotations

import pytest

from bratslab.data.discovery import discover_cases
from bratslab.data.layout import case_file_name, detect_layout, parse_file_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS2021_00000_t1.nii.gz", ("BraTS2021_00000", "t1n", "t1")),
        ("BraTS2021_00000_t1ce.nii.gz", ("BraTS2021_00000", "t1c", "t1ce")),
        ("BraTS2021_00000_t2.nii.gz", ("BraTS2021_00000", "t2w", "t2")),
        ("BraTS2021_00000_flair.nii.gz", ("BraTS2021_00000", "t2f", "flair")),
        ("BraTS2021_00000_seg.nii.gz", ("BraTS2021_00000", "seg", "seg")),
        ("BraTS-SSA-00002-000-t1n.nii.gz", ("BraTS-SSA-00002-000", "t1n", "t1n")),
        ("BraTS-SSA-00002-000-t1c.nii.gz", ("BraTS-SSA-00002-000", "t1c", "t1c")),
        ("BraTS-SSA-00002-000-t2w.nii.gz", ("BraTS-SSA-00002-000", "t2w", "t2w")),
        ("BraTS-SSA-00002-000-t2f.nii.gz", ("BraTS-SSA-00002-000", "t2f", "t2f")),
        ("BraTS-SSA-00002-000-seg.nii", ("BraTS-SSA-00002-000", "seg", "seg")),
        ("patient7_T1w.nii.gz", ("patient7", "t1n", "t1w")),
        ("patient7_T1-native.nii.gz", ("patient7", "t1n", "t1-native")),
        ("patient7_T1Gd.nii.gz", ("patient7", "t1c", "t1gd")),
        ("patient7-t1-gd.nii.gz", ("patient7", "t1c", "t1-gd")),
        ("patient7_t1post.nii.gz", ("patient7", "t1c", "t1post")),
        ("patient7_T2-FLAIR.nii.gz", ("patient7", "t2f", "t2-flair")),
        ("patient7_FLAIR.NII.GZ", ("patient7", "t2f", "flair")),
    ],
)
def test_parse_file_name_maps_synonyms(name, expected):
    assert parse_file_name(name) == expected


@pytest.mark.parametrize("name", ["README.md", "BraTS2021_00000_t1ce.mha", "t1.nii.gz", "x.nii"])
def test_parse_file_name_rejects_non_modalities(name):
    assert parse_file_name(name) is None


@pytest.mark.parametrize(
    ("case_id", "layout", "cohort"),
    [
        ("BraTS2021_01666", "brats2021", "GLI"),
        ("BraTS-GLI-00000-000", "brats2023", "GLI"),
        ("BraTS-SSA-00002-000", "brats2023", "SSA"),
        ("BraTS-PED-00003-000", "brats2023", "PED"),
        ("BraTS-MEN-00004-000", "brats2023", "MEN"),
        ("BraTS-MET-00005-000", "brats2023", "MET"),
        ("BraTS-MEN-RT-0001-1", "brats2023", "MEN-RT"),
    ],
)
def test_detect_layout_from_case_id(case_id, layout, cohort):
    assert detect_layout(case_id, set()) == (layout, cohort)


def test_unknown_ids_fall_back_to_modality_names():
    assert detect_layout("p1", {"t1", "t1ce", "t2", "flair"})[0] == "brats2021"
    assert detect_layout("p1", {"t1n", "t1c", "t2w", "t2f"})[0] == "brats2023"


@pytest.mark.parametrize(("layout", "et"), [("brats2021", 4), ("brats2023", 3)])
def test_discover_cases_layout_and_label_convention(cases, layout, et):
    cid = "BraTS2021_00001" if layout == "brats2021" else "BraTS-SSA-00001-000"
    cases.write(cid, layout)
    found = discover_cases(cases.root)
    assert [c.id for c in found] == [cid]
    c = found[0]
    assert c.layout == layout and c.et_label == et
    assert sorted(c.files) == ["t1c", "t1n", "t2f", "t2w"]
    assert c.seg is not None and c.has_label and c.problems == []
    for m, p in c.files.items():
        assert p.name == case_file_name(cid, m, layout)


def test_case_without_seg_is_inference_only(cases):
    cases.write("BraTS-GLI-00009-000", with_seg=False)
    (c,) = discover_cases(cases.root)
    assert c.seg is None and not c.has_label and c.problems == []


def test_flat_folder_groups_by_prefix(cases, tmp_path):
    folder = cases.write("BraTS-MET-00001-000")
    folder2 = cases.write("BraTS-MET-00002-000", seed=1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list(folder.iterdir()) + list(folder2.iterdir()):
        f.rename(flat / f.name)
    found = discover_cases(flat)
    assert [c.id for c in found] == ["BraTS-MET-00001-000", "BraTS-MET-00002-000"]
    assert all(len(c.files) == 4 and c.seg is not None for c in found)


def test_missing_and_duplicate_modalities_are_problems(cases):
    folder = cases.write("BraTS-GLI-00001-000")
    cases.path(folder, "t2f").unlink()
    t1 = cases.path(folder, "t1n")
    (folder / "BraTS-GLI-00001-000-t1w.nii.gz").write_bytes(t1.read_bytes())
    (c,) = discover_cases(cases.root)
    reasons = [r for _, r in c.problems]
    assert "missing modality t2f (found t1n, t1c, t2w)" in reasons
    assert any(r.startswith("duplicate t1n image") for r in reasons)
    # Every missing modality in one line, with what was found.
    cases.path(folder, "t1c").unlink()
    (c,) = discover_cases(cases.root)
    assert "missing modalities t1c, t2f (found t1n, t2w)" in [r for _, r in c.problems]


def test_discover_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        discover_cases(tmp_path / "nope")


def test_raw_case_roundtrips_through_dict(cases):
    cases.write("BraTS2021_00003", "brats2021", with_seg=False)
    (c,) = discover_cases(cases.root)
    from bratslab.data.layout import RawCase

    assert RawCase.from_dict(c.to_dict()) == c


def test_same_case_in_two_folders_is_a_problem(cases, tmp_path):
    cases.write("BraTS-GLI-00001-000", root=tmp_path / "raw" / "a")
    cases.write("BraTS-GLI-00001-000", root=tmp_path / "raw" / "b")
    (c,) = discover_cases(tmp_path / "raw")
    assert any("found twice" in r for _, r in c.problems)
