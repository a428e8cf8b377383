"""Registering an ensemble: the fold models of a cross-validation run, or any compatible
models, as ONE version whose artifact folder holds them all (``ensemble.json`` + one model
directory per member, :mod:`bratslab.tracking.model_folder`); every file gets a sha256 tag.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from bratslab.tracking import mlflow_runs
from bratslab.tracking.alias_guard import SELECTION_TAG
from bratslab.tracking.mlflow_runs import client, tracking_uri
from bratslab.tracking.model_folder import canonical_ref, write_ensemble_dir
from bratslab.tracking.model_store import fetch_model_dir, log_model_dir
from bratslab.tracking.model_versions import (
    RegistryError,
    check_model_name,
    get_version,
    logged_model_id,
    logged_model_of_run,
    model_uri,
    parse_ref,
    source_run_id,
)
from bratslab.tracking.promotion import set_alias
from bratslab.tracking.registration import register, run_model
from bratslab.tracking.run_ids import is_run_ref

log = logging.getLogger(__name__)

KIND_TAG = "bratslab.kind"  # "sweep", "cv" (a cross-validation parent run), "ensemble"
CV_FOLDS_TAG = "bratslab.cv.folds"  # on a CV parent run: the folds it trains, "0,1,2"
MEMBERS_TAG = "bratslab.ensemble.members"  # on an ensemble version: its member names
CV_RUN_TAG = "bratslab.cv_run_id"  # on an ensemble version made from a CV run
CV_SELECTION = "cv/mean/val/dice_mean"  # what a CV ensemble's alias moves are judged on


@dataclass
class Member:
    """One model of an ensemble: its folder name, logged model and source run."""

    name: str
    source: str
    run_id: str | None
    params: dict[str, str] = field(default_factory=dict)


def cv_members(cv_run_id: str, *, uri: str | None = None) -> list[Member]:
    """The fold models of a cross-validation parent run, one per fold its
    ``bratslab.cv.folds`` tag lists (each fold's newest FINISHED run), named ``fold<k>``.

    Raises:
        RegistryError: no such run, not a CV run, or a fold without a finished run and model.
    """
    c = client(uri)
    try:
        parent = c.get_run(cv_run_id)
    except MlflowException:
        raise RegistryError(f"no run {cv_run_id!r} in {tracking_uri(uri)}") from None
    tags = parent.data.tags
    if tags.get(KIND_TAG) != "cv" or not tags.get(CV_FOLDS_TAG):
        raise RegistryError(f"run {cv_run_id} is not a cross-validation run (`train --folds`)")
    folds = [int(f) for f in tags[CV_FOLDS_TAG].split(",")]
    children = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{cv_run_id}' and "
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    by_fold: dict[int, Any] = {}
    for run in children:
        fold = run.data.params.get("data.fold")
        if fold is not None and fold.isdigit():
            by_fold.setdefault(int(fold), run)  # newest first
    missing = [k for k in folds if k not in by_fold]
    if missing:
        raise RegistryError(
            f"CV run {cv_run_id}: fold(s) {missing} have no finished run; rerun `bratslab train "
            "--folds` with the same name to finish them"
        )
    return [
        Member(
            f"fold{k}",
            logged_model_of_run(by_fold[k].info.run_id, uri=uri),
            by_fold[k].info.run_id,
            dict(by_fold[k].data.params),
        )
        for k in folds
    ]


def members_of(refs: list[str], *, uri: str | None = None) -> list[Member]:
    """Members from run ids, logged models (``models:/<model_id>``) or registered versions
    (``models:/NAME/V``, ``NAME@alias``); named ``fold<k>`` when every source run trained a
    different ``data.fold``, else ``member<i>``."""
    c = client(uri)
    out = []
    for ref in refs:
        ref = ref.strip()
        if is_run_ref(ref):  # a run id, or a unique prefix of one
            source = run_model(ref, uri=uri)
        elif logged_model_id(ref) is not None:
            source = ref
        else:
            name, alias, version = parse_ref(canonical_ref(ref, bare_name=True))
            source = model_uri(
                name, version=get_version(name, alias=alias, version=version, uri=uri).version
            )
        run_id = source_run_id(source, uri=uri)
        params = dict(c.get_run(run_id).data.params) if run_id else {}
        out.append(Member("", source, run_id, params))
    folds = [m.params.get("data.fold") for m in out]
    by_fold = None not in folds and len(set(folds)) == len(folds)
    for i, m in enumerate(out):
        m.name = f"fold{m.params['data.fold']}" if by_fold else f"member{i}"
    return out


def _member_dir(member: Member, tmp: Path, uri: str | None) -> Path:
    """A verified local model directory of ``member`` (registered versions and logged models
    alike, through the content-addressed cache, checked against their recorded sha256)."""
    return fetch_model_dir(member.source, uri=uri)


def _check_compatible(dirs: list[tuple[str, Path]]) -> None:
    """Members must share preprocessing, patch size and output kind (their probabilities are
    averaged voxel by voxel)."""
    infos = [(n, json.loads((d / "model.json").read_text())) for n, d in dirs]
    first_name, first = infos[0]
    for n, info in infos[1:]:
        for key in ("preprocessing", "patch_size"):
            if info.get(key) != first.get(key):
                raise ValueError(f"ensemble: member {n} has a different {key!r} than {first_name}")
        if info.get("model", {}).get("output") != first.get("model", {}).get("output"):
            raise ValueError(f"ensemble: members {n} and {first_name} differ in output kind")


def register_ensemble(
    name: str,
    refs: list[str] | None = None,
    *,
    cv_run_id: str | None = None,
    alias: str | None = None,
    uri: str | None = None,
    force: bool = False,
) -> tuple[str, list[Member]]:
    """Register models as ONE version of ``name`` whose artifact folder holds them all
    (``ensemble.json`` + ``members/<name>/model.pt``/``model.json``, see
    :mod:`bratslab.tracking.model_store`); every file gets a sha256 version tag.

    The members are ``refs`` (:func:`members_of`) or the fold runs of the CV parent
    ``cv_run_id`` (:func:`cv_members`). The folder is logged as a model of a new run
    ``ensemble-<name>`` (kind ``ensemble``, nested under the CV run when there is one, with
    that run's ``cv/`` metrics copied so the version shows them; its selection metric, which
    ``alias`` is guarded on, is then ``cv/mean/val/dice_mean``).

    Returns:
        ``(version, members)``.
    Raises:
        RegistryError: a run or model does not resolve, or a CV fold is unfinished.
        ValueError: fewer than two members, or members that cannot be averaged.
    """
    check_model_name(name)
    if (cv_run_id is None) == (not refs):
        raise ValueError("give the member models or a CV run (--cv-run), not both or neither")
    members = cv_members(cv_run_id, uri=uri) if cv_run_id else members_of(list(refs or []), uri=uri)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    with tempfile.TemporaryDirectory(prefix="bratslab-ensemble-") as tmp:
        dirs = [(m.name, _member_dir(m, Path(tmp) / "src", uri)) for m in members]
        _check_compatible(dirs)
        stores = {m.params.get("data.store") for m in members}
        extra = {"cv_run_id": cv_run_id, "store": stores.pop() if len(stores) == 1 else None}
        folder = write_ensemble_dir(
            Path(tmp) / "ensemble",
            [(n, d, m.source) for (n, d), m in zip(dirs, members, strict=True)],
            extra,
        )
        run_id = _ensemble_run(name, members, cv_run_id, uri)
        try:
            source = log_model_dir(folder, run_id=run_id, name="ensemble", uri=uri)
        except BaseException:
            mlflow_runs.end_run(run_id, "FAILED", uri)
            raise
        mlflow_runs.end_run(run_id, "FINISHED", uri)
    tags = {KIND_TAG: "ensemble", MEMBERS_TAG: ",".join(m.name for m in members)}
    if cv_run_id:
        tags.update({CV_RUN_TAG: cv_run_id, SELECTION_TAG: CV_SELECTION})
    version = register(source, name, tags, uri=uri)
    if alias:
        set_alias(name, version, alias, uri=uri, force=force)
    return version, members


def _ensemble_run(name: str, members: list[Member], cv_run_id: str | None, uri) -> str:
    """A new run to log the ensemble's model to, in the experiment of the CV run (or of the
    first member's run), carrying the CV run's ``cv/`` metrics."""
    c = client(uri)
    anchor = cv_run_id or members[0].run_id
    experiment = "bratslab"
    metrics: dict[str, float] = {}
    if anchor:
        run = c.get_run(anchor)
        experiment = c.get_experiment(run.info.experiment_id).name
        if cv_run_id:
            metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("cv/")}
    run_id = mlflow_runs.start_run(
        experiment=experiment,
        run_name=f"ensemble-{name}",
        tags={
            KIND_TAG: "ensemble",
            MEMBERS_TAG: ",".join(f"{m.name}={m.source}" for m in members),
        },
        parent_run_id=cv_run_id,
        uri=uri,
    )
    mlflow_runs.log_metrics(run_id, metrics, 0, uri)
    return run_id
