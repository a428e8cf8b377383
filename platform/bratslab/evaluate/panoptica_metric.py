"""The BraTS lesion-wise metric of the ``panoptica`` family (the organisers' metric since 2025).

Through the ``panoptica`` package (Apache-2.0; the optional extra ``bratslab[panoptica]``), with
the settings of the organisers' per-challenge configs: semantic input; per region (label group of
the profile, several labels merged into one) connected-component instances (cc3d, 26-connected in
3-D); instances matched by maximum bipartite matching on Dice with threshold 1e-6; instance
metrics DSC, NSD and HD95 and the same three on the whole binary region (``global_bin_*``). Edge
cases as there: with no true positive, DSC and NSD are 0 and HD95 is ∞; with no instance at all
(both empty) they are NaN.

Values per region are panoptica's own keys: ``tp``, ``fp``, ``fn``, ``prec``, ``rec``, ``rq``
(F1 of detection), ``sq_dsc`` (mean Dice of matched lesions), ``pq_dsc`` (= rq · sq_dsc),
``sq_hd95``, ``sq_nsd`` (and their ``_std``), ``global_bin_dsc``, ``global_bin_hd95``,
``global_bin_nsd``, instance counts and volumes.

Inputs are read with nibabel, so arrays are (X, Y, Z) with the header's voxel sizes in the same
order. (Given file paths, panoptica itself prefers SimpleITK when it is installed, whose arrays
are (Z, Y, X) while its spacing stays (X, Y, Z): on anisotropic voxels its distances differ from
these; on BraTS's 1 mm isotropic data both agree.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from bratslab.data.profiles import Profile, get_profile

EXTRA = "panoptica"
MATCHING_THRESHOLD = 1e-6
HD95_CAP = 373.0  # mm, what the organisers' result parser puts for an infinite HD95 in summaries


class MissingExtraError(ImportError):
    """The optional ``panoptica`` package is not installed."""


def _panoptica():
    """The ``panoptica`` module, quiet (no citation banner, no info logging)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import panoptica
            from panoptica.utils.citation_reminder import disable_citation_reminder
    except ImportError as e:
        raise MissingExtraError(
            f"the panoptica metric needs the optional package panoptica ({e}); "
            f"install it with: pip install 'bratslab[{EXTRA}]'"
        ) from None
    disable_citation_reminder()
    logging.getLogger("panoptica").setLevel(logging.WARNING)
    return panoptica


def label_groups(profile: Profile) -> dict[str, tuple[int, ...]]:
    """Region name → labels, the groups panoptica scores (in the profile's report order)."""
    return dict(profile.regions)


def build_evaluator(profile: str | Profile):
    """A ``panoptica.Panoptica_Evaluator`` for ``profile``'s regions with the official settings."""
    return _build_evaluator(get_profile(profile).name)


@lru_cache(maxsize=16)
def _build_evaluator(name: str):
    pan = _panoptica()
    from panoptica.utils.edge_case_handling import (
        EdgeCaseHandler,
        EdgeCaseResult,
        MetricZeroTPEdgeCaseHandling,
    )
    from panoptica.utils.label_group import LabelGroup, LabelMergeGroup
    from panoptica.utils.segmentation_class import SegmentationClassGroups

    metric = pan.Metric

    def zero_tp(value: EdgeCaseResult) -> MetricZeroTPEdgeCaseHandling:
        return MetricZeroTPEdgeCaseHandling(
            empty_prediction_result=value,
            empty_reference_result=value,
            no_instances_result=EdgeCaseResult.NAN,
            normal=value,
        )

    groups = {
        region: (LabelMergeGroup if len(labels) > 1 else LabelGroup)(
            list(labels), single_instance=False
        )
        for region, labels in label_groups(get_profile(name)).items()
    }
    with contextlib.redirect_stdout(io.StringIO()):  # "same labels in two groups" is intended
        class_groups = SegmentationClassGroups(groups)
    return pan.Panoptica_Evaluator(
        expected_input=pan.InputType.SEMANTIC,
        instance_approximator=pan.ConnectedComponentsInstanceApproximator(),
        instance_matcher=pan.MaxBipartiteMatching(
            matching_metric=metric.DSC, matching_threshold=MATCHING_THRESHOLD
        ),
        edge_case_handler=EdgeCaseHandler(
            listmetric_zeroTP_handling={
                metric.DSC: zero_tp(EdgeCaseResult.ZERO),
                metric.NSD: zero_tp(EdgeCaseResult.ZERO),
                metric.HD95: zero_tp(EdgeCaseResult.INF),
            },
            empty_list_std=EdgeCaseResult.NAN,
        ),
        segmentation_class_groups=class_groups,
        instance_metrics=[metric.DSC, metric.NSD, metric.HD95],
        global_metrics=[metric.DSC, metric.NSD, metric.HD95],
        decision_metric=None,
        decision_threshold=None,
        log_times=False,
        verbose=False,
    )


def score_labels(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    profile: str | Profile,
    *,
    instances: bool = False,
) -> dict[str, dict]:
    """Panoptica metrics of one case per region of ``profile``.

    Args:
        pred, ref: label maps ``(X, Y, Z)`` in the profile's source convention (non-negative ints).
        spacing: voxel size (mm) per axis, in the arrays' axis order.
        instances: also return each region's ``reference_instances`` (per GT lesion: voxel
            count, volume, matched or not, and its Dice/HD95/NSD when matched).

    Returns:
        ``{region: {metric: value}}``; values are floats (ints for counts), NaN/∞ as panoptica
        gives them.

    Raises:
        MissingExtraError: ``panoptica`` is not installed.
        ValueError: a label outside the profile's, or shapes that differ.
    """
    prof = get_profile(profile)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference {ref.shape}")
    allowed = set(prof.allowed_labels)
    for name, arr in (("prediction", pred), ("reference", ref)):
        bad = sorted(set(np.unique(arr).tolist()) - allowed)
        if bad:
            raise ValueError(
                f"{name} holds labels {bad} outside the {prof.name} convention {sorted(allowed)}"
            )
    evaluator = _build_evaluator(prof.name)
    dtype = np.uint8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # NSD's "default threshold" notice, once per call
        results = evaluator.evaluate(
            np.ascontiguousarray(pred, dtype=dtype),
            np.ascontiguousarray(ref, dtype=dtype),
            voxelspacing=tuple(float(s) for s in spacing),
        )
    out: dict[str, dict] = {}
    for region, res in results.items():
        values = res.to_dict(output_individual_instance_metrics=instances)
        out[region] = {k: _plain(v) for k, v in values.items()}
    return out


def lesionwise_dice(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], profile: str | Profile
) -> dict[str, float]:
    """The organisers' lesion-wise Dice per region of ``profile`` for one case: panoptica's
    ``sq_dsc`` (mean Dice over matched lesions; 0 when no lesion matched), which their
    ``brats-evaluation`` parser reports as ``lesionwise_dsc_mean``; a region empty in both the
    prediction and the reference (NaN there) counts 1, as in the BraTS 2023 definition.

    ``pred``, ``ref``: label maps ``(X, Y, Z)`` in the profile's source convention.
    """
    out = {}
    for region, values in score_labels(pred, ref, spacing, profile).items():
        value = float(values.get("sq_dsc", math.nan))
        out[region] = 1.0 if math.isnan(value) else value
    return out


def check_installed() -> None:
    """Raise :class:`MissingExtraError` (naming the extra) unless ``panoptica`` imports."""
    _panoptica()


def _plain(value):
    """numpy scalars → Python numbers (lists/dicts recursively), for JSON and comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer | bool):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value)
    return value


def capped(metric: str, value: float) -> float:
    """A value as the organisers' summaries use it: an infinite HD95 becomes 373 mm."""
    if "hd95" in metric and isinstance(value, float) and math.isinf(value):
        return HD95_CAP
    return value


__all__ = [
    "EXTRA",
    "HD95_CAP",
    "MissingExtraError",
    "build_evaluator",
    "capped",
    "check_installed",
    "label_groups",
    "lesionwise_dice",
    "score_labels",
]
