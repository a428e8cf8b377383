"""Does an ensemble beat its best member? Score both on a store's labelled cases.

``bratslab models compare-ensemble NAME/V [--store STORE]``: every member and the ensemble
predict each labelled case of the store in store space (sliding window, optional TTA:
:func:`bratslab.inference.sliding_window.predict_probabilities`), and are scored with the
``evaluate-model`` metrics (:func:`bratslab.inference.model_eval.score_case`: voxel Dice, HD95
and BraTS lesion-wise Dice per region). Each member runs once per case; the ensemble's
probabilities are the members' mean, which is what ``predict`` computes for an ensemble (every
member sees the same TTA views, so the mean of the members' means is the mean over all
passes).

Which store: by default the one the members trained on (recorded at registration). There each
member trained on every case outside its own fold's validation cases, so most cases were
*training* cases for all members but one: the comparison flatters every member and says little
about generalisation. A separate labelled store, e.g. ``bratslab data synth --shift strong``
then ``bratslab data preprocess``, is the honest test; the report says which it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bratslab.data.labels import labels_to_regions, probabilities_to_regions
from bratslab.data.store import Store
from bratslab.inference.model_eval import find_run_id, score_case, summarise
from bratslab.inference.model_loading import build_models, load_payload, resolve_device

log = logging.getLogger(__name__)

HEADLINES = ("dice_mean", "lesion_dice_mean")  # the metrics the verdict is given on
SAME_STORE_CAVEAT = (
    "scored on the members' own training store: each member trained on every case outside its "
    "fold's validation cases, so this favours the members and says little about new data; "
    "pass --store with a held-out store (e.g. `bratslab data synth --shift strong`) for an "
    "honest comparison"
)


@dataclass
class EnsembleComparison:
    """Means over the scored cases per member and for the ensemble (``score_case`` keys plus
    ``*_mean`` over regions), the best member per headline metric and whether the ensemble
    beats it (strictly)."""

    ref: str
    store: str
    same_store: bool
    caveat: str
    cases: int
    tta: str
    members: dict[str, dict[str, float]]
    ensemble: dict[str, float]
    best_member: dict[str, str] = field(default_factory=dict)
    beats: dict[str, bool] = field(default_factory=dict)


def _store_of(payload, store: str | Path | None) -> Path:
    if store is not None:
        return Path(store)
    recorded = (payload.info.get("ensemble") or {}).get("store")
    if not recorded:
        raise ValueError(
            f"{payload.source}: no training store recorded with the ensemble; pass --store"
        )
    return Path(recorded)


def compare_ensemble(
    ref: str | Path,
    store: str | Path | None = None,
    *,
    tta: str = "none",
    max_cases: int | None = None,
    challenge: str = "gli",
    device: str = "auto",
    amp: bool = True,
) -> EnsembleComparison:
    """Score the ensemble ``ref`` and each member on ``store``'s labelled cases.

    Raises:
        ValueError: ``ref`` is not an ensemble, the store has no labelled case, or no store
            was given and none was recorded.
    """
    payload = load_payload(ref)
    if not payload.members:
        raise ValueError(f"{ref}: not an ensemble (register one with `models register --ensemble`)")
    st = Store(_store_of(payload, store))
    cases = st.labeled_ids()[:max_cases] if max_cases else st.labeled_ids()
    if not cases:
        raise ValueError(f"{st.path}: no labelled cases to score")
    names = list(payload.info["ensemble"]["members"])
    models = build_models(payload.members)  # one build per member, cached as a set
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in [*names, "ensemble"]}
    for cid in cases:
        for label, row in _score_one(st, cid, models, names, payload, tta, challenge, device, amp):
            rows[label].append(row)
    trained_on = {m.info.get("store_fingerprint_hash") for m in payload.members}
    report = EnsembleComparison(
        ref=str(ref),
        store=str(st.path),
        same_store=st.fingerprint_hash in trained_on,
        caveat=SAME_STORE_CAVEAT if st.fingerprint_hash in trained_on else "",
        cases=len(cases),
        tta=tta,
        members={n: summarise(rows[n], "") for n in names},
        ensemble=summarise(rows["ensemble"], ""),
    )
    for key in HEADLINES:
        best = max(names, key=lambda n: report.members[n][key])
        report.best_member[key] = best
        report.beats[key] = bool(report.ensemble[key] > report.members[best][key])
    return report


def _score_one(st, cid, models, names, payload, tta, challenge, device, amp):
    """``(label, score_case row)`` of each member and of the ensemble for case ``cid``."""
    from bratslab.inference.sliding_window import predict_probabilities

    x = np.asarray(st.load_x(cid), dtype=np.float32)
    gt = labels_to_regions(np.asarray(st.load_y(cid)))
    spacing = tuple(st.meta(cid).zooms)
    output = payload.output
    probs = [
        predict_probabilities(
            model,
            x,
            roi_size=[int(s) for s in payload.info["patch_size"]],
            tta=tta,
            device=resolve_device(device),
            activation="sigmoid" if output == "regions" else "softmax",
            amp=amp,
        )[0]
        for model in models
    ]
    labelled = [*zip(names, probs, strict=True), ("ensemble", np.mean(probs, axis=0))]
    for label, p in labelled:
        yield label, score_case(probabilities_to_regions(p, output), gt, spacing, challenge)


def verdicts(report: EnsembleComparison) -> list[str]:
    """One plain sentence per headline metric: ensemble vs its best member."""
    lines = []
    for key in HEADLINES:
        best = report.best_member[key]
        ens, top = report.ensemble[key], report.members[best][key]
        what = "beats" if report.beats[key] else "does NOT beat"
        lines.append(
            f"{key}: ensemble {ens:.4f} vs best member {best} {top:.4f} "
            f"({ens - top:+.4f}): the ensemble {what} its best member"
        )
    return lines


def log_comparison(ref: str | Path, report: EnsembleComparison) -> str | None:
    """Log the comparison to the MLflow run behind ``ref`` (an ensemble version's run) as
    ``compare/ensemble/<metric>``, ``compare/<member>/<metric>``,
    ``compare/best_member/<metric>`` and tags saying which store and whether it beat the best
    member; returns the run id, or None when ``ref`` has no known run."""
    run_id = find_run_id(ref)
    if run_id is None:
        log.warning("no MLflow run known for %s: comparison not logged", ref)
        return None
    from bratslab.tracking import mlflow_runs

    metrics = {f"compare/ensemble/{k}": v for k, v in report.ensemble.items()}
    for name, m in report.members.items():
        metrics.update({f"compare/{name}/{k}": v for k, v in m.items()})
    for key, best in report.best_member.items():
        metrics[f"compare/best_member/{key}"] = report.members[best][key]
    mlflow_runs.log_metrics(run_id, metrics, 0)
    tags = {
        "bratslab.compare.store": report.store,
        "bratslab.compare.same_store": str(report.same_store).lower(),
        "bratslab.compare.tta": report.tta,
    }
    for key, beats in report.beats.items():
        tags[f"bratslab.compare.beats_best_member.{key}"] = str(beats).lower()
    mlflow_runs.set_tags(run_id, tags)
    return run_id


__all__ = ["EnsembleComparison", "compare_ensemble", "log_comparison", "verdicts"]
