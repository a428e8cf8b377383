"""Which thresholds a prediction uses: explicit ones, none, or those its model carries.

``"model"`` (the default of ``bratslab predict`` and ``evaluate-model``) reads the thresholds a
registered model version carries (:mod:`bratslab.tracking.postprocess_store`), or the
``postprocess.json`` of a model folder downloaded from one (``bratslab models download``; the
folder's ``SHA256SUMS`` covers it). A training checkpoint, a ``runs:/`` URI or a version without
thresholds gets no post-processing, and the log says so. An ensemble is post-processed only
when every member carries the same thresholds
(thresholds fitted for one model are not meant for another's outputs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from bratslab.data.region_set import RegionSet
from bratslab.postprocess.config import PostprocessConfig, config_from_data, load_config_file
from bratslab.tracking.manifest import verify_local_dir
from bratslab.tracking.model_folder import canonical_ref

log = logging.getLogger(__name__)

Choice = Literal["model", "none"] | PostprocessConfig
#: The thresholds of a downloaded model folder (bratslab.tracking.download.POSTPROCESS_FILE).
FOLDER_FILE = "postprocess.json"


def check_fits_regions(pp: PostprocessConfig | None, rs: RegionSet, source: str) -> None:
    """Thresholds fit a model's regions: WT/TC/ET ones a BraTS 2021/2023 model, a profile's
    ``min_size`` a model of that profile.

    Raises:
        ValueError: they were fitted for other regions (both are named).
    """
    if pp is None:
        return
    if (pp.profile is None) == rs.legacy and (pp.profile is None or pp.profile == rs.profile):
        return
    meant_for = pp.profile or "brats2021/2023 (WT/TC/ET)"
    raise ValueError(
        f"post-processing thresholds for {meant_for}; {source} predicts the {rs.profile} "
        f"regions ({', '.join(r.upper() for r in rs.scored)}): fit its own (`bratslab "
        "postprocess fit`) or leave them out (--no-postprocess)"
    )


def thresholds_for_model(ref: str | Path) -> PostprocessConfig | None:
    """The thresholds carried by the registered version ``ref``, or None (see module doc)."""
    text = str(ref)
    folder_file = Path(text).expanduser() / FOLDER_FILE
    if folder_file.is_file():  # a downloaded version: its thresholds travel with it
        verify_local_dir(folder_file.parent)
        return load_config_file(folder_file)
    text = canonical_ref(text)  # NAME@ALIAS, NAME/V: the registered version (with a hint)
    if not text.startswith("models:/"):  # no registry lookup (nor MLflow import) for the rest
        return None
    from bratslab.tracking.postprocess_store import POSTPROCESS_TAG, read_thresholds

    data = read_thresholds(text)
    if data is None:
        return None
    return config_from_data(data, f"{text} (tag {POSTPROCESS_TAG})")


def resolve_postprocess(
    choice: Choice, model_refs: Sequence[str | Path] | str | Path
) -> PostprocessConfig | None:
    """The thresholds to apply (None: no post-processing), logging which and why."""
    refs = [model_refs] if isinstance(model_refs, (str, Path)) else list(model_refs)
    if isinstance(choice, PostprocessConfig):
        log.info("post-processing: %s (given explicitly)", choice.summary())
        return None if choice.is_noop else choice
    if choice == "none":
        log.info("post-processing: off (--no-postprocess)")
        return None
    found = [thresholds_for_model(r) for r in refs]
    if any(f is None for f in found):
        missing = [str(r) for r, f in zip(refs, found, strict=True) if f is None]
        log.info(
            "post-processing: none (%s carries no fitted thresholds: only a registered version "
            "fitted with `bratslab postprocess fit`, or a folder downloaded from one, does)",
            ", ".join(missing),
        )
        return None
    if any(f != found[0] for f in found[1:]):
        log.info("post-processing: none (the ensemble's members carry different thresholds)")
        return None
    log.info("post-processing: %s (from %s)", found[0].summary(), refs[0])
    return None if found[0].is_noop else found[0]


__all__ = ["Choice", "resolve_postprocess", "thresholds_for_model"]
