"""Fit post-processing thresholds on validation cases: coordinate-wise search, lesion-wise Dice.

Objective: the mean over cases of the mean BraTS lesion-wise Dice of WT, TC and ET
(:func:`bratslab.evaluate.lesionwise.lesion_metrics`, the challenge's ``d`` and ``T``). The
search starts from no post-processing and tries each parameter of
:class:`~bratslab.postprocess.config.PostprocessConfig` in turn over the candidate sizes, the
others fixed, keeping a value only when it raises the objective (so ties keep the smaller,
more conservative threshold, and a true small lesion found in validation is never sacrificed
for nothing); ``passes`` rounds at most.

Cheap by construction: each case's components are computed once; a config is reduced to how
many components it removes per region (:func:`~bratslab.postprocess.apply.removal_counts`), and
the scores of a case are cached by those counts, so candidates that remove the same
components are scored once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bratslab.data.labels import REGIONS, labels_to_regions
from bratslab.data.profiles import get_profile
from bratslab.postprocess.apply import (
    apply_counts,
    apply_profile_counts,
    profile_components,
    profile_removal_counts,
    region_components,
    removal_counts,
)
from bratslab.postprocess.config import REFERENCE_VOXELS, FitConfig, PostprocessConfig

log = logging.getLogger(__name__)

# ET→NCR before ET deletion: relabelling a spurious ET spot inside the core keeps WT and TC
# whole, and once ET deletion took the spot, relabelling it could never be found better.
PARAMS = ("min_size_wt", "min_size_tc", "et_to_ncr_below", "min_size_et")


@dataclass
class FitCase:
    """One validation case: predicted store labels ``(X, Y, Z)`` (ET = 3), the reference
    regions bool ``(3, X, Y, Z)`` (WT, TC, ET) and the voxel spacing in mm; ``volume_voxels``:
    the size of the whole volume when these arrays are a crop of it (else their own size).
    For a profile's fit (:func:`fit_thresholds` ``profile``): labels in its source convention,
    the reference one channel per region of the profile, in its order."""

    case_id: str
    labels: np.ndarray
    gt: np.ndarray
    spacing: Sequence[float]
    volume_voxels: int | None = None

    @property
    def voxels(self) -> int:
        return self.volume_voxels or self.labels.size


@dataclass
class FitResult:
    """The chosen thresholds and lesion-wise Dice per region (and ``mean``) before and after."""

    config: PostprocessConfig
    before: dict[str, float]
    after: dict[str, float]
    candidates: list[int]
    cases: list[str] = field(default_factory=list)
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        regions = [r.upper() for r in self.before if r != "mean"]
        return {
            "before": self.before,
            "after": self.after,
            "candidates": self.candidates,
            "cases": self.cases,
            "objective": f"mean lesion-wise Dice ({', '.join(regions)})",
        }


class CaseScorer:
    """Lesion-wise Dice of each case under a config, components and scores computed once."""

    def __init__(self, cases: Sequence[FitCase], challenge: str):
        self.cases = list(cases)
        self.challenge = challenge
        self.comps = [region_components(c.labels) for c in self.cases]
        self._cache: list[dict[tuple[int, ...], np.ndarray]] = [{} for _ in self.cases]

    @property
    def evaluations(self) -> int:
        return sum(len(c) for c in self._cache)

    def case_scores(self, i: int, cfg: PostprocessConfig) -> np.ndarray:
        """``(3,)`` lesion-wise Dice (WT, TC, ET) of case ``i`` post-processed with ``cfg``."""
        from bratslab.evaluate.lesionwise import lesion_metrics

        key = removal_counts(self.comps[i], cfg)
        cached = self._cache[i].get(key)
        if cached is None:
            case = self.cases[i]
            pred = labels_to_regions(apply_counts(case.labels, self.comps[i], key))
            cached = np.array(
                [
                    lesion_metrics(pred[r], case.gt[r], case.spacing, self.challenge).lesion_dice
                    for r in range(len(REGIONS))
                ]
            )
            self._cache[i][key] = cached
        return cached

    def region_scores(self, cfg: PostprocessConfig) -> dict[str, float]:
        """``{"wt", "tc", "et", "mean"}``: lesion-wise Dice averaged over the cases."""
        per_case = np.stack([self.case_scores(i, cfg) for i in range(len(self.cases))])
        means = per_case.mean(axis=0)
        out = {r: float(means[k]) for k, r in enumerate(REGIONS)}
        out["mean"] = float(means.mean())
        return out


class ProfileCaseScorer(CaseScorer):
    """:class:`CaseScorer` over every region of a challenge profile (``cfg.min_size``), with
    the profile's lesion-wise parameters."""

    def __init__(self, cases: Sequence[FitCase], profile: str):
        from bratslab.evaluate.lesionwise import profile_params

        prof = get_profile(profile)
        self.cases = list(cases)
        self.regions = tuple(prof.regions)
        self.challenge = profile_params(prof)
        self.comps = [profile_components(c.labels, prof.name) for c in self.cases]
        self._cache = [{} for _ in self.cases]

    def case_scores(self, i: int, cfg: PostprocessConfig) -> np.ndarray:
        """``(R,)`` lesion-wise Dice per region of case ``i`` post-processed with ``cfg``."""
        from bratslab.evaluate.lesionwise import lesion_metrics

        key = profile_removal_counts(self.comps[i], cfg)
        cached = self._cache[i].get(key)
        if cached is None:
            case = self.cases[i]
            labels = apply_profile_counts(case.labels, self.comps[i], key)
            regions = get_profile(cfg.profile).regions
            cached = np.array(
                [
                    lesion_metrics(
                        np.isin(labels, regions[r]), case.gt[k], case.spacing, self.challenge
                    ).lesion_dice
                    for k, r in enumerate(self.regions)
                ]
            )
            self._cache[i][key] = cached
        return cached

    def region_scores(self, cfg: PostprocessConfig) -> dict[str, float]:
        """Each region's lesion-wise Dice averaged over the cases, and ``mean``."""
        per_case = np.stack([self.case_scores(i, cfg) for i in range(len(self.cases))])
        means = per_case.mean(axis=0)
        out = {r: float(means[k]) for k, r in enumerate(self.regions)}
        out["mean"] = float(means.mean())
        return out


def candidate_sizes(cases: Sequence[FitCase], fit: FitConfig) -> list[int]:
    """The candidates scaled to the cases' size: ``fit.scale``, or for ``"auto"`` the cube root
    of (median voxels per case / a full BraTS volume), at most 1. 0 stays 0; others stay ≥ 1."""
    if fit.scale == "auto":
        voxels = float(np.median([c.voxels for c in cases]))
        scale = min(1.0, (voxels / REFERENCE_VOXELS) ** (1.0 / 3.0))
    else:
        scale = float(fit.scale)
    return sorted({0 if c == 0 else max(1, round(c * scale)) for c in fit.candidates})


def fit_thresholds(
    cases: Sequence[FitCase], fit: FitConfig | None = None, profile: str | None = None
) -> FitResult:
    """Search :data:`PARAMS` coordinate-wise over the scaled candidates (see the module doc);
    with ``profile``, a minimum size per region of that profile instead (``min_size``).

    Raises:
        ValueError: no cases, or a case whose prediction and reference shapes differ.
    """
    fit = fit or FitConfig()
    if not cases:
        raise ValueError("post-processing fit: no validation cases")
    n_regions = len(REGIONS) if profile is None else len(get_profile(profile).regions)
    for c in cases:
        if c.gt.shape != (n_regions, *c.labels.shape):
            raise ValueError(f"{c.case_id}: prediction {c.labels.shape} vs reference {c.gt.shape}")
    if profile is None:
        scorer, params = CaseScorer(cases, fit.challenge), PARAMS
        current = PostprocessConfig()
    else:
        scorer = ProfileCaseScorer(cases, profile)
        params = scorer.regions
        current = PostprocessConfig(profile=profile)
    sizes = candidate_sizes(cases, fit)
    before = scorer.region_scores(current)
    best = before["mean"]
    for n in range(fit.passes):
        changed = False
        for param in params:
            for size in sizes:
                if size == _value(current, param):
                    continue
                trial = _with(current, param, size)
                value = scorer.region_scores(trial)["mean"]
                if value > best + fit.min_gain:
                    current, best, changed = trial, value, True
        log.info("post-processing fit pass %d: %s → %.4f", n + 1, current.summary(), best)
        if not changed:
            break
    return FitResult(
        config=current,
        before=before,
        after=scorer.region_scores(current),
        candidates=sizes,
        cases=[c.case_id for c in cases],
        evaluations=scorer.evaluations,
    )


def _value(cfg: PostprocessConfig, param: str) -> int:
    """A threshold of ``cfg``: a WT/TC/ET field, or a profile region's ``min_size``."""
    return cfg.min_size.get(param, 0) if cfg.profile else getattr(cfg, param)


def _with(cfg: PostprocessConfig, param: str, size: int) -> PostprocessConfig:
    """``cfg`` with one threshold (see :func:`_value`) set to ``size``."""
    if cfg.profile:
        return cfg.model_copy(update={"min_size": {**cfg.min_size, param: size}})
    return cfg.model_copy(update={param: size})


__all__ = [
    "PARAMS",
    "CaseScorer",
    "ProfileCaseScorer",
    "FitCase",
    "FitResult",
    "candidate_sizes",
    "fit_thresholds",
]
