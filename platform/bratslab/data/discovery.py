"""Finding the cases of a raw dataset folder: BraTS file names (any layout, any nesting) or an
nnU-Net raw dataset (:mod:`bratslab.data.nnunet`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bratslab.data import nnunet
from bratslab.data.layout import (
    ET_LABEL,
    RawCase,
    detect_layout,
    missing_modalities,
    parse_file_name,
)


def discover_cases(raw_dir: str | Path, profile: str | None = None) -> list[RawCase]:
    """Find every case under ``raw_dir`` (recursively), sorted by id.

    Files are grouped per folder by the prefix left after removing the modality suffix, so both
    one-folder-per-case and flat layouts work. Files with no recognised modality are ignored.

    A case id found in two folders becomes a problem of that case (it is quarantined).

    An nnU-Net raw dataset (``dataset.json`` + ``imagesTr/``) is read by
    :func:`bratslab.data.nnunet.discover_nnunet` instead (its labels mapped to ``profile``'s),
    and so is its ``imagesTs/`` or ``imagesTr/`` folder alone (only that folder's cases), the
    folder nnU-Net's own ``predict -i`` takes.

    Raises:
        FileNotFoundError: ``raw_dir`` does not exist.
        ValueError: a malformed nnU-Net ``dataset.json`` (the message names the problem).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: no such folder")
    if nnunet.is_nnunet_raw(raw_dir):
        return nnunet.discover_nnunet(raw_dir, profile)
    if raw_dir.name in nnunet.SPLITS and nnunet.is_nnunet_raw(raw_dir.resolve().parent):
        return nnunet.discover_nnunet(raw_dir.resolve().parent, profile, (raw_dir.name,))
    groups: dict[tuple[Path, str], list[tuple[str, str, Path]]] = defaultdict(list)
    for path in sorted(raw_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        parsed = parse_file_name(path.name)
        if parsed is None:
            continue
        case_id, modality, token = parsed
        groups[(path.parent, case_id)].append((modality, token, path))

    cases: dict[str, RawCase] = {}
    for (folder, case_id), entries in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if case_id in cases:
            # Ambiguous: quarantine the case rather than guess which copy is meant.
            cases[case_id].problems.append((str(folder), f"case id {case_id} found twice"))
            continue
        files: dict[str, Path] = {}
        seg = None
        problems: list[tuple[str, str]] = []
        for modality, _token, path in entries:
            if modality == "seg":
                if seg is not None:
                    problems.append((str(path), f"second segmentation besides {seg.name}"))
                seg = path
            elif modality in files:
                problems.append(
                    (str(path), f"duplicate {modality} image besides {files[modality].name}")
                )
            else:
                files[modality] = path
        if missing := missing_modalities(files):
            problems.append((str(folder), missing))
        layout, cohort = detect_layout(case_id, {t for _, t, _ in entries})
        cases[case_id] = RawCase(
            id=case_id,
            files=files,
            seg=seg,
            layout=layout,
            et_label=ET_LABEL[layout],
            cohort=cohort,
            problems=problems,
        )
    return [cases[k] for k in sorted(cases)]
