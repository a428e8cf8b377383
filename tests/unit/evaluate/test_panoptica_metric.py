"""bratslab's panoptica metric agrees with the organisers' ``brats-evaluation`` package.

Both run on the same NIfTI pairs written here (real .nii.gz via nibabel): bratslab through
``bratslab evaluate --metric panoptica``'s code path, the reference through
``brats_evaluation.evaluate_single_exam`` with the package's own bundled config of the challenge.
Every value the official result holds must agree to 1e-6 (NaN with NaN, ∞ with ∞), including the
per-lesion rows. ``brats-evaluation`` is AGPL: a test-only dependency (the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("panoptica", reason="the panoptica extra is not installed")
brats_evaluation = pytest.importorskip(
    "brats_evaluation",
    reason="brats-evaluation (the organisers' metric package, dev extra) is not installed",
)

from bratslab.data.profiles import get_profile  # noqa: E402
from bratslab.evaluate.panoptica_metric import score_labels  # noqa: E402
from bratslab.evaluate.panoptica_scoring import score_files  # noqa: E402

SHAPE = (36, 32, 24)


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True))
    return d <= 1.0


def _lesion(rng, labels, out: np.ndarray) -> None:
    """A nested lesion: an outer shell of one label, an inner core of another (like WT ⊃ TC)."""
    center = [int(rng.integers(6, s - 6)) for s in out.shape]
    radii = rng.uniform(2.0, 5.5, size=3)
    outer = _ellipsoid(out.shape, center, radii)
    inner = _ellipsoid(out.shape, center, radii * rng.uniform(0.3, 0.7))
    a, b = rng.choice(labels, size=2, replace=len(labels) < 2)
    out[outer] = a
    out[inner] = b


def _pairs(profile_name: str, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """≥ 6 (name, prediction, reference) pairs: perturbed, missed + FP lesions, relabelled,
    identical, empty prediction, empty reference, both empty."""
    rng = np.random.default_rng(seed)
    labels = sorted(get_profile(profile_name).labels)
    out = []
    for kind in ("shifted", "missed_fp", "relabelled", "identical", "empty_pred", "empty_ref",
                 "both_empty"):  # fmt: skip
        ref = np.zeros(SHAPE, np.uint8)
        for _ in range(int(rng.integers(2, 4))):
            _lesion(rng, labels, ref)
        if kind == "shifted":
            pred = np.roll(ref, (1, -1, 1), axis=(0, 1, 2))
        elif kind == "missed_fp":
            pred = ref.copy()
            lab = ref[ref > 0][0]
            pred[ref == lab] = 0  # one label's lesions missed entirely
            _lesion(rng, labels, pred)  # and a false positive lesion
        elif kind == "relabelled":
            pred = ref.copy()
            pred[(ref == labels[0]) & (rng.random(SHAPE) < 0.5)] = labels[-1]
        elif kind == "identical":
            pred = ref.copy()
        elif kind == "empty_pred":
            pred = np.zeros_like(ref)
        elif kind == "empty_ref":
            pred, ref = ref, np.zeros_like(ref)
        else:
            pred, ref = np.zeros_like(ref), np.zeros_like(ref)
        out.append((kind, pred, ref))
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float) and math.isinf(a):
        return a == b
    return abs(float(a) - float(b)) <= 1e-6


def _instances(rows: list[dict]) -> list[tuple]:
    """Per-lesion rows as a sorted multiset (lesion numbers depend on the reader's axis order)."""
    keys = sorted({k for r in rows for k in r})
    return sorted(tuple(round(float(r.get(k, -1.0)), 6) for k in keys) for r in rows)


def _official(config: str, pred_path, ref_path) -> dict:
    from panoptica import Panoptica_Evaluator

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = Panoptica_Evaluator.load_from_config(brats_evaluation.config_path(config))
        result = brats_evaluation.evaluate_single_exam(
            str(pred_path), str(ref_path), "case", evaluator
        )
    assert "error" not in result, result
    result.pop("subject_name")
    return result


def _compare(official: dict, ours: dict) -> int:
    """Assert every official value equals ours; returns how many values were compared."""
    assert set(official) == set(ours), (list(official), list(ours))
    n = 0
    for region, values in official.items():
        assert set(values) == set(ours[region]), set(values) ^ set(ours[region])
        for key, value in values.items():
            if key == "reference_instances":
                assert _instances(value) == _instances(ours[region][key]), (region, key)
                n += sum(len(r) for r in value)
                continue
            assert _same(value, ours[region][key]), (region, key, value, ours[region][key])
            n += 1
    return n


@pytest.mark.parametrize(("profile", "config"), [("gli", "gli"), ("ped", "ped"), ("mets", "mets")])
def test_agrees_with_the_official_package(tmp_path, profile, config):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])  # BraTS: 1 mm isotropic
    compared = rc_matched = 0
    kinds = set()
    for i, (kind, pred, ref) in enumerate(
        _pairs(profile, seed={"gli": 1, "ped": 2, "mets": 5}[profile])
    ):
        pred_path, ref_path = tmp_path / f"p{i}.nii.gz", tmp_path / f"r{i}.nii.gz"
        nib.save(nib.Nifti1Image(pred, affine), pred_path)
        nib.save(nib.Nifti1Image(ref, affine), ref_path)
        official = _official(config, pred_path, ref_path)
        ours = score_labels(
            np.asarray(nib.load(pred_path).dataobj),
            np.asarray(nib.load(ref_path).dataobj),
            (1.0, 1.0, 1.0),
            profile,
            instances=True,
        )
        compared += _compare(official, ours)
        if "rc" in official:
            rc_matched += int(official["rc"]["tp"])
        # The folder path (CSV rows) reports the same numbers.
        rows = {
            r["region"]: r for r in score_files(f"c{i}", pred_path, ref_path, get_profile(profile))
        }
        for region, values in official.items():
            for key in ("tp", "fp", "fn", "rq", "sq_dsc", "pq_dsc", "global_bin_dsc"):
                if key in values:
                    assert _same(values[key], rows[region][key]), (kind, region, key)
        kinds.add(kind)
    assert {"empty_pred", "empty_ref", "both_empty"} <= kinds and len(kinds) >= 6
    assert compared > 200
    if profile == "gli":  # RC (label 4) is its own region, outside WT, and was matched
        assert set(official) == {"snfh", "et", "netc", "rc", "tc", "wt"} and rc_matched > 0


def test_anisotropic_voxels_match_the_official_config_read_with_nibabel(tmp_path):
    # panoptica given file paths reads them with SimpleITK when installed, whose arrays are
    # (Z, Y, X) while its spacing stays (X, Y, Z); bratslab keeps arrays and spacing in the same
    # order, which is what the official config gives when fed nibabel images.
    from panoptica import Panoptica_Evaluator

    kind, pred, ref = _pairs("gli", seed=7)[1]
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    pred_img, ref_img = nib.Nifti1Image(pred, affine), nib.Nifti1Image(ref, affine)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = Panoptica_Evaluator.load_from_config(brats_evaluation.config_path("gli"))
        official = {k: r.to_dict(True) for k, r in evaluator.evaluate(pred_img, ref_img).items()}
    spacing = ref_img.header.get_zooms()  # float32 in the header, as read_label_map gives
    ours = score_labels(pred, ref, spacing, "gli", instances=True)
    assert _compare(official, ours) > 30


def test_evaluate_cli_panoptica_writes_every_region(tmp_path):
    from typer.testing import CliRunner

    from bratslab.app.main import app

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    affine = np.eye(4)
    pairs = _pairs("gli", seed=3)[:2]
    for i, (_, pred, ref) in enumerate(pairs):
        cid = f"BraTS-GLI-0000{i}-100"
        case_dir = ref_dir / cid
        case_dir.mkdir(parents=True)
        for m in ("t1n", "t1c", "t2w", "t2f"):
            nib.save(
                nib.Nifti1Image(np.ones(SHAPE, np.int16), affine), case_dir / f"{cid}-{m}.nii.gz"
            )
        nib.save(nib.Nifti1Image(ref, affine), case_dir / f"{cid}-seg.nii.gz")
        pred_dir.mkdir(exist_ok=True)
        if i == 0:  # the second case has no prediction: scored as empty
            nib.save(nib.Nifti1Image(pred, affine), pred_dir / f"{cid}.nii.gz")
    out = tmp_path / "m.csv"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(pred_dir),
            "--ref",
            str(ref_dir),
            "--metric",
            "panoptica",
            "--profile",
            "gli",
            "--output",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["region"] for r in rows} == {
        "et",
        "netc",
        "snfh",
        "rc",
        "tc",
        "wt",
    }
    missed = [r for r in rows if r["case"] == "BraTS-GLI-00001-100" and r["fn"] != "0"]
    assert missed and all(r["tp"] == "0" and r["global_bin_dsc"] == "0" for r in missed)
    summary = json.loads(out.with_name("m.summary.json").read_text())
    assert summary["profile"] == "brats2024-gli" and summary["missing_predictions"] == [
        "BraTS-GLI-00001-100"
    ]
    assert summary["regions"]["rc"]["global_bin_hd95"]["mean"] <= 373.0


def test_default_profile_follows_the_reference_names(tmp_path):
    from bratslab.data.discovery import discover_cases
    from bratslab.evaluate.panoptica_scoring import default_profile, evaluate_folder_panoptica

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    pred_dir.mkdir()
    ref = np.zeros(SHAPE, np.uint8)
    ref[4:12, 4:12, 4:10] = 2
    ref[6:10, 6:10, 5:9] = 4  # BraTS 2021: 4 is ET, not RC
    cid = "BraTS2021_00001"
    (ref_dir / cid).mkdir(parents=True)
    for m in ("t1", "t1ce", "t2", "flair"):
        image = nib.Nifti1Image(np.ones(SHAPE, np.int16), np.eye(4))
        nib.save(image, ref_dir / cid / f"{cid}_{m}.nii.gz")
    nib.save(nib.Nifti1Image(ref, np.eye(4)), ref_dir / cid / f"{cid}_seg.nii.gz")
    nib.save(nib.Nifti1Image(ref, np.eye(4)), pred_dir / f"{cid}.nii.gz")
    assert default_profile(discover_cases(ref_dir)) == "brats2021"
    result = evaluate_folder_panoptica(pred_dir, ref_dir, None, progress=False)
    et = next(r for r in result.rows if r["region"] == "et")
    assert result.summary["profile"] == "brats2021" and et["tp"] == 1 and et["sq_dsc"] == 1.0
    peds = [
        dataclasses.replace(c, cohort="PED", layout="brats2023") for c in discover_cases(ref_dir)
    ]
    with pytest.raises(ValueError, match="give --profile"):
        default_profile(peds)
