"""nnU-Net raw datasets (``nnUNet_raw/DatasetXXX_Name/``) read as BraTS cases.

Layout (nnU-Net v2)::

    dataset.json            channel_names {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                            labels {"background": 0, "whole tumor": [1, 2, 3],
                                    "tumor core": [2, 3], "enhancing tumor": 3},
                            regions_class_order [1, 2, 3], file_ending ".nii.gz", numTraining
    imagesTr/CASE_0000.nii.gz … CASE_0003.nii.gz    one file per channel
    labelsTr/CASE.nii.gz                            the segmentation
    imagesTs/CASE_0000.nii.gz …                     cases without segmentation

Channel names map to t1n/t1c/t2w/t2f through the BraTS modality synonyms (an unknown name is an
error naming it). The meaning of each label value comes from the label names: sub-regions
(NCR/NETC, ED/SNFH, ET, RC) directly, or nnU-Net's region definitions (whole tumour, tumour core,
enhancing tumour): ET = the ET region, NCR = TC ∖ ET, ED = WT ∖ TC. nnU-Net's BraTS conversion
(1 = ED, 2 = NCR, 3 = ET) thus becomes the profile's values (NCR 1, ED 2, ET 3 for BraTS 2023)
when the segmentation is read.

Folds: ``nnUNet_preprocessed/DatasetXXX/splits_final.json`` (a list of ``{"train": [ids],
"val": [ids]}``) read by :func:`read_splits` become the store's folds unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bratslab.data.layout import MODALITIES, SYNONYMS, RawCase, missing_modalities
from bratslab.data.profiles import Profile, get_profile

DATASET_JSON = "dataset.json"

# Normalised label name (lower case, letters and digits only) → BraTS meaning.
_MEANINGS: dict[str, str] = {
    **dict.fromkeys(
        (
            "ncr",
            "netc",
            "ncrnet",
            "necrosis",
            "necrotic",
            "necroticcore",
            "necrotictumorcore",
            "nonenhancing",
            "nonenhancingtumor",
            "nonenhancingtumorcore",
            "nonenhancingcore",
        ),
        "NCR",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "ed",
            "edema",
            "oedema",
            "peritumoraledema",
            "snfh",
            "surroundingflairhyperintensity",
            "surroundingnonenhancingflairhyperintensity",
        ),
        "ED",
    ),  # fmt: skip
    **dict.fromkeys(("et", "enhancing", "enhancingtumor", "enhancingtumour"), "ET"),
    **dict.fromkeys(("rc", "resectioncavity", "cavity"), "RC"),
    **dict.fromkeys(("wt", "wholetumor", "wholetumour", "whole"), "WT"),
    **dict.fromkeys(("tc", "tumorcore", "tumourcore", "core"), "TC"),
}
# Profile label names that carry each meaning.
_PROFILE_NAMES = {"NCR": {"NCR", "NETC", "NCR/NET"}, "ED": {"ED", "SNFH"}, "ET": {"ET"},
                  "RC": {"RC"}}  # fmt: skip
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class NnUNetError(ValueError):
    """A malformed nnU-Net dataset; the message names the file and the problem."""


def is_nnunet_raw(folder: str | Path) -> bool:
    """Whether ``folder`` is an nnU-Net raw dataset (``dataset.json`` with ``channel_names``)."""
    path = Path(folder) / DATASET_JSON
    if not path.is_file() or not (Path(folder) / "imagesTr").is_dir():
        return False
    try:
        return "channel_names" in json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # it looks like one: let read_dataset_json name the problem


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def channel_modalities(channel_names: dict, path: Path) -> dict[int, str]:
    """``{"0": "T1", ...}`` → ``{0: "t1n", ...}``; every BraTS modality exactly once."""
    out: dict[int, str] = {}
    for key, name in channel_names.items():
        modality = SYNONYMS.get(str(name).lower().replace("_", "-"))
        if modality is None or modality == "seg":
            known = ", ".join(sorted(k for k in SYNONYMS if k != "seg"))
            raise NnUNetError(
                f"{path}: channel {key} {name!r} is not a BraTS modality (known names: {known})"
            )
        if not str(key).isdigit():
            raise NnUNetError(f"{path}: channel key {key!r} is not a channel number")
        out[int(key)] = modality
    if sorted(out.values()) != sorted(MODALITIES):
        raise NnUNetError(
            f"{path}: channels {sorted(out.values())} must be the four BraTS modalities "
            f"{list(MODALITIES)} once each"
        )
    return out


def _label_sets(labels: dict, path: Path) -> dict[str, set[int]]:
    """``labels`` of dataset.json → meaning (NCR, ED, ET, RC, WT, TC) → label values."""
    out: dict[str, set[int]] = {}
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and v >= 0 for v in values):
            raise NnUNetError(f"{path}: label {name!r} has values {value!r}, not label numbers")
        if values == [0]:
            continue  # background
        meaning = _MEANINGS.get(_norm(name))
        if meaning is None:
            raise NnUNetError(
                f"{path}: label {name!r} is not a BraTS label (tumour sub-regions NCR/NETC, "
                "ED/SNFH, ET, RC, or regions whole tumor, tumor core, enhancing tumor)"
            )
        out[meaning] = set(values)
    return out


def value_meanings(labels: dict, path: Path) -> dict[int, str]:
    """Each label value of the dataset → its BraTS meaning (``NCR``, ``ED``, ``ET``, ``RC``)."""
    sets = _label_sets(labels, path)
    if "ET" not in sets:
        raise NnUNetError(f"{path}: no enhancing-tumour label among {sorted(labels)}")
    out: dict[int, str] = {}
    if "WT" in sets or "TC" in sets:  # nnU-Net region definitions: nested sets
        et, tc = sets["ET"], sets.get("TC", sets["ET"] | sets.get("NCR", set()))
        wt = sets.get("WT", tc | sets.get("ED", set()))
        for v in sorted(wt | tc | et):
            out[v] = "ET" if v in et else "NCR" if v in tc else "ED"
    else:
        for meaning, values in sets.items():
            if len(values) != 1:
                raise NnUNetError(f"{path}: label {meaning} needs one value, has {sorted(values)}")
            out[next(iter(values))] = meaning
    for v in sets.get("RC", set()):
        if out.get(v, "RC") != "RC":
            raise NnUNetError(f"{path}: value {v} is both RC and a tumour label")
        out[v] = "RC"
    return out


def relabel_map(meanings: dict[int, str], profile: Profile, path: Path) -> dict[int, int]:
    """Dataset value → the profile's value of the same meaning (background 0 → 0)."""
    out = {0: 0}
    for value, meaning in meanings.items():
        hits = [v for v, n in profile.labels.items() if n in _PROFILE_NAMES[meaning]]
        if not hits:
            raise NnUNetError(f"{path}: profile {profile.name} has no {meaning} label")
        out[value] = hits[0]
    return out


def read_dataset_json(folder: str | Path, profile: str | None = None) -> dict:
    """Parse ``dataset.json``: ``{"channels": {i: modality}, "relabel": {value: value},
    "profile": name, "file_ending": str, "regions_class_order": list | None}``.

    Without ``profile``: ``brats2024-gli`` when an RC label is declared, else ``brats2023-gli``.
    """
    path = Path(folder) / DATASET_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NnUNetError(f"{path}: cannot read ({e})") from None
    for key in ("channel_names", "labels"):
        if not isinstance(meta.get(key), dict):
            raise NnUNetError(f"{path}: {key} is missing or not an object")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise NnUNetError(f"{path}: file_ending {ending!r} is not supported (NIfTI only)")
    order = meta.get("regions_class_order")
    if order is not None and not (
        isinstance(order, list) and all(isinstance(v, int) for v in order)
    ):
        raise NnUNetError(f"{path}: regions_class_order must be a list of label numbers")
    meanings = value_meanings(meta["labels"], path)
    prof = get_profile(profile or ("brats2024-gli" if "RC" in meanings.values() else None))
    return {
        "channels": channel_modalities(meta["channel_names"], path),
        "relabel": relabel_map(meanings, prof, path),
        "profile": prof.name,
        "file_ending": ending,
        "regions_class_order": order,
    }


SPLITS = ("imagesTr", "imagesTs")


def discover_nnunet(
    folder: str | Path, profile: str | None = None, splits: tuple[str, ...] = SPLITS
) -> list[RawCase]:
    """Every case of imagesTr (with labelsTr) and imagesTs (``splits``: only these), sorted by
    id. Each case's ``relabel`` maps the dataset's label values to the profile's: a labelsTr
    segmentation is read through it, and ``predict`` writes the inverse (the dataset's own
    values, as nnU-Net's predictions have them)."""
    folder = Path(folder)
    info = read_dataset_json(folder, profile)
    cases: dict[str, RawCase] = {}
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        if split not in splits:
            continue
        groups: dict[str, dict[str, Path]] = {}
        problems: dict[str, list[tuple[str, str]]] = {}
        images = folder / split
        for p in sorted(images.glob(f"*{info['file_ending']}")) if images.is_dir() else []:
            m = _CHANNEL_FILE.match(p.name[: -len(info["file_ending"])])
            if m is None or p.name.startswith("."):
                continue
            channel = int(m["channel"])
            if channel not in info["channels"]:
                problems.setdefault(m["case"], []).append((str(p), f"channel {channel} unknown"))
                continue
            groups.setdefault(m["case"], {})[info["channels"][channel]] = p
        for cid, files in groups.items():
            if cid in cases:  # ambiguous: quarantine rather than guess which copy is meant
                cases[cid].problems.append((str(images), "case id in both imagesTr and imagesTs"))
                continue
            seg = folder / "labelsTr" / f"{cid}{info['file_ending']}" if labelled else None
            probs = problems.get(cid, [])
            if missing := missing_modalities(files):
                probs.append((str(images), missing))
            if seg is not None and not seg.is_file():
                probs.append((str(seg), "segmentation missing from labelsTr"))
                seg = None
            cases[cid] = RawCase(
                id=cid,
                files=files,
                seg=seg,
                layout="brats2023",
                et_label=get_profile(info["profile"]).et_label or 3,
                problems=probs,
                profile=info["profile"],
                relabel=info["relabel"],
            )
    return [cases[k] for k in sorted(cases)]


def read_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """``splits_final.json`` → ``[{"train": [ids], "val": [ids]}, ...]`` (ids sorted).

    Raises:
        NnUNetError: unreadable or not a list of ``{"train", "val"}`` id lists.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NnUNetError(f"{path}: cannot read the splits ({e})") from None
    ok = isinstance(data, list) and data and all(
        isinstance(f, dict) and set(f) == {"train", "val"}
        and all(isinstance(i, str) for i in f["train"] + f["val"])
        for f in data
    )  # fmt: skip
    if not ok:
        raise NnUNetError(f"{path}: expected a list of {{'train': [ids], 'val': [ids]}} folds")
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in data]
