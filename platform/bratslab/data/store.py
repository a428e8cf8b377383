"""The preprocessed store: ``dataset.json`` + per-case ``.npy`` arrays, read with ``mmap``.

Layout::

    STORE/dataset.json     manifest, fingerprint, patch size, folds, preprocessing, and
                           "files": {name: {"sha256", "size"}} of every case file below
    STORE/{id}_x.npy       (C, X, Y, Z) float16|float32: t1n, t1c, t2w, t2f, foreground mask
    STORE/{id}_y.npy       (1, X, Y, Z) uint8 labels {0,1,2,3} (ET=3) for BraTS 2021/2023
                           data, the profile's own values for 2024+ profiles (RC = 4, ...);
                           only cases with a seg
    STORE/{id}_meta.npy    (3, 3) int64 [bbox start, bbox end (exclusive), original shape]
    STORE/{id}_meta.json   CaseMeta: everything needed to restore predictions exactly
    STORE/failures.json    [{"case", "file", "reason"}, ...] quarantined cases of the last run

The per-file hashes let a copy of the store be verified file by file (an ``s3://`` store is
synced into a node-local folder that way, see :mod:`bratslab.data.remote`).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from bratslab import atomic
from bratslab.data.fingerprint import (
    compute_fingerprint,
    fingerprint_hash,
    make_folds,
    suggest_patch_size,
)
from bratslab.data.meta import CaseMeta
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.profiles import DEFAULT_PROFILE, Profile, get_profile, legacy_profile
from bratslab.data.remote import sha256_file

STORE_FORMAT = "bratslab-store/1"
MANIFEST = "dataset.json"
FAILURES = "failures.json"


def build_manifest(
    metas: list[CaseMeta],
    cfg: PreprocessConfig,
    quarantined: list[str] | None = None,
    files: dict[str, dict] | None = None,
    profile: str | None = None,
    folds: list[dict] | None = None,
) -> dict:
    """The ``dataset.json`` content for these cases (deterministic: sorted, no timestamps).

    ``files``: ``{file name: {"sha256", "size"}}`` of the cases' files (:func:`case_digests`),
    listed under ``"files"`` when given. ``profile``: the challenge profile the user gave;
    without one it is :func:`dataset_profile` of the cases. ``folds``: given folds (nnU-Net's
    ``splits_final.json``) instead of a seeded split; ids of cases not in the store (e.g.
    quarantined) are left out of them.
    """
    metas = sorted(metas, key=lambda m: m.id)
    fp = compute_fingerprint(metas)
    labeled = [m.id for m in metas if m.has_label]
    patch = (
        suggest_patch_size(
            fp["median_cropped_shape"],
            fp["min_stored_shape"],
            cfg.patch_multiple,
            cfg.patch_voxel_budget,
        )
        if metas
        else None
    )
    fp_hash = fingerprint_hash(fp, cfg, [m.id for m in metas])
    if folds is None:
        folds = make_folds(labeled, cfg.num_folds, cfg.split_seed)
    else:
        keep = set(labeled)
        folds = [{k: sorted(i for i in f[k] if i in keep) for k in ("train", "val")} for f in folds]
        # The folds are part of what a model trained on this store saw.
        blob = json.dumps(folds, sort_keys=True).encode()
        fp_hash = hashlib.sha256(fp_hash.encode() + blob).hexdigest()
    return {
        "format": STORE_FORMAT,
        "channels": cfg.channels,
        "dtype": cfg.dtype,
        "cases": [
            {
                "id": m.id,
                "shape": m.shape,
                "cropped_shape": [e - s for s, e in zip(m.bbox_start, m.bbox_end, strict=True)],
                "original_shape": m.original_shape,
                "zooms": m.zooms,
                "has_label": m.has_label,
                "label_voxels": m.label_voxels,
                "layout": m.layout,
                "cohort": m.cohort,
                "et_label": m.et_label,
                "profile": m.profile,
            }
            for m in metas
        ],
        "profile": profile or dataset_profile(metas),
        "quarantined": sorted(quarantined or []),
        "fingerprint": fp,
        "fingerprint_hash": fp_hash,
        "patch_size": patch,
        "num_folds": len(folds),
        "folds": folds,
        "preprocessing": cfg.model_dump(mode="json"),
        **({"files": {k: files[k] for k in sorted(files)}} if files is not None else {}),
    }


def dataset_profile(metas: list[CaseMeta]) -> str:
    """The profile a store of these cases follows: the one detected on its cases (a 2024+
    post-treatment case makes the whole store post-treatment, whose label values include the
    2023 ones), else the 2023 profile of their common cohort, else ``brats2023-gli``."""
    detected = sorted({m.profile for m in metas if m.profile})
    if len(detected) > 1:
        raise ValueError(f"cases were read in different profiles {detected}; give --profile")
    if detected:
        return detected[0]
    cohorts = {m.cohort for m in metas if m.layout == "brats2023"}
    if len(cohorts) == 1 and None not in cohorts:
        return legacy_profile("brats2023", cohorts.pop()).name
    return DEFAULT_PROFILE


def case_digests(paths: list[Path]) -> dict[str, dict]:
    """``{file name: {"sha256", "size"}}`` of the existing files among ``paths``."""
    return {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in paths if p.is_file()
    }


def write_manifest(out_dir: str | Path, manifest: dict) -> bool:
    """Write ``dataset.json`` atomically unless identical bytes are already there.

    Returns whether the file changed (a resumed run that changes nothing touches nothing).
    """
    path = Path(out_dir) / MANIFEST
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    atomic.write_text(path, text)
    return True


class Store:
    """Read access to a preprocessed store folder.

    Arrays open memory-mapped by default, so a patch read touches only its own pages.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{mpath}: no such file (not a bratslab store; run `bratslab data preprocess`)"
            )
        try:
            self.manifest: dict = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath}: not valid JSON ({e})") from e
        if self.manifest.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{mpath}: format {self.manifest.get('format')!r}, expected {STORE_FORMAT!r}"
            )
        self._cases = {c["id"]: c for c in self.manifest["cases"]}

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, cases={len(self._cases)})"

    def __len__(self) -> int:
        return len(self._cases)

    @property
    def channels(self) -> list[str]:
        return list(self.manifest["channels"])

    @property
    def profile(self) -> Profile:
        """The challenge profile of the store's labels (a store written before profiles were
        recorded is a BraTS 2023 store)."""
        return get_profile(self.manifest.get("profile") or DEFAULT_PROFILE)

    @property
    def patch_size(self) -> tuple[int, int, int] | None:
        """Suggested training patch ``(x, y, z)`` voxels."""
        p = self.manifest.get("patch_size")
        return tuple(p) if p else None

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def fingerprint_hash(self) -> str:
        return self.manifest["fingerprint_hash"]

    @property
    def num_folds(self) -> int:
        return int(self.manifest["num_folds"])

    @cached_property
    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.model_validate(self.manifest["preprocessing"])

    def case(self, case_id: str) -> dict:
        """The manifest entry of one case (id, shape, has_label, label_voxels, ...)."""
        try:
            return self._cases[case_id]
        except KeyError:
            raise KeyError(f"{self.path}: no case {case_id!r}") from None

    def case_ids(
        self, fold: int | None = None, split: Literal["all", "train", "val"] = "all"
    ) -> list[str]:
        """Case ids, sorted.

        ``fold=None``: every case (``split`` must be ``"all"``). With a fold: ``"train"`` or
        ``"val"`` ids of that fold (labelled cases only), ``"all"`` both.
        """
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be all, train or val, not {split!r}")
        if fold is None:
            if split != "all":
                raise ValueError(f"split={split!r} needs a fold")
            return sorted(self._cases)
        folds = self.manifest["folds"]
        if not 0 <= fold < len(folds):
            raise ValueError(f"{self.path}: fold {fold} out of range 0..{len(folds) - 1}")
        f = folds[fold]
        if split == "all":
            return sorted(f["train"] + f["val"])
        return list(f[split])

    def labeled_ids(self) -> list[str]:
        return sorted(i for i, c in self._cases.items() if c["has_label"])

    def load_x(self, case_id: str, mmap: bool = True) -> np.ndarray:
        """``(C, X, Y, Z)`` image channels (float16/float32), read-only memmap by default."""
        self.case(case_id)
        return np.load(self.path / f"{case_id}_x.npy", mmap_mode="r" if mmap else None)

    def load_y(self, case_id: str, mmap: bool = True) -> np.ndarray:
        """``(1, X, Y, Z)`` uint8 labels {0,1,2,3}; raises KeyError for an unlabelled case."""
        if not self.case(case_id)["has_label"]:
            raise KeyError(f"{self.path}: case {case_id!r} has no segmentation")
        return np.load(self.path / f"{case_id}_y.npy", mmap_mode="r" if mmap else None)

    def meta(self, case_id: str) -> CaseMeta:
        """The case's :class:`CaseMeta` (for :func:`restore_to_source` and export)."""
        self.case(case_id)
        return CaseMeta.model_validate_json((self.path / f"{case_id}_meta.json").read_bytes())

    def failures(self) -> list[dict]:
        p = self.path / FAILURES
        return json.loads(p.read_text()) if p.is_file() else []
