"""The MLflow model registry: register versions, move the ``champion`` alias, look models up.

MLflow 3 registers *logged models* (``models:/<model_id>`` from
:func:`bratslab.tracking.model_store.log_model_dir`, or ``runs:/<run>/<name>``). Stages are
deprecated; a version's role is an alias (``champion``), and ``models:/NAME@champion`` resolves
to whichever version holds it now.

Integrity: every version registered here carries the sha256 of its ``model.pt`` and
``model.json`` as version tags (:data:`bratslab.tracking.model_store.HASH_TAGS`), computed from
the files as stored; :func:`download` and :func:`bratslab.tracking.model_store.fetch_model_dir`
refuse files that no longer match. An ensemble version (:func:`register_ensemble`: the fold
models of a cross-validation run, or any compatible models, in one artifact folder) carries a
sha256 tag for every file, ``ensemble.json`` and each member's two files.

Concurrency: the registry has no compare-and-set and alias writes are last-writer-wins, so
:func:`promote_if_better` marks the version as a candidate for the alias (a version tag), then
compares, sets, re-reads and repeats until the alias holds the best of the candidates marked in
the last :data:`CANDIDATE_WINDOW_S` seconds. Whichever promoter writes last sees every candidate
that compared before its write, and any later candidate compares against that final write, so
no interleaving leaves a worse version holding the alias. On the embedded SQLite store the whole
sequence also runs under a file lock beside the database, one promoter at a time.

Works against the embedded SQLite store and a tracking server alike (the URI comes from
settings or the ``uri`` argument).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from bratslab.tracking.alias_guard import (  # AliasRefusedError: callers catch it from here
    SELECTION_TAG,
    AliasRefusedError,  # noqa: F401
    check_alias_target,
)
from bratslab.tracking.mlflow_runs import (
    client,
    download_artifacts,
    global_uris,
    sqlite_path,
    tracking_uri,
)
from bratslab.tracking.model_store import (
    find_model_dir,
    is_model_dir,
    model_hashes,
)
from bratslab.tracking.model_store import verify_model_dir as _verify

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANDIDATE_TAG = "bratslab.promote."  # + alias: {"t": time, "metric", "mode"} of a promotion
CANDIDATE_WINDOW_S = 600.0  # promotions this recent take part in settling an alias
_SETTLE_ROUNDS = 20
_RUN_ID = re.compile(r"[0-9a-f]{32}")
KIND_TAG = "bratslab.kind"  # "sweep", "cv" (a cross-validation parent run), "ensemble"
CV_FOLDS_TAG = "bratslab.cv.folds"  # on a CV parent run: the folds it trains, "0,1,2"
MEMBERS_TAG = "bratslab.ensemble.members"  # on an ensemble version: its member names
CV_RUN_TAG = "bratslab.cv_run_id"  # on an ensemble version made from a CV run
CV_SELECTION = "cv/mean/val/dice_mean"  # what a CV ensemble's alias moves are judged on


class RegistryError(LookupError):
    """A registered model, version or alias does not exist, or a reference is malformed."""


@dataclass
class VersionInfo:
    """One registered model version, flattened for display and comparison."""

    name: str
    version: str
    aliases: list[str]
    status: str
    created: datetime | None
    source: str
    download_uri: str
    run_id: str | None
    model_id: str | None
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelSummary:
    """A registered model: its latest version and where each alias points."""

    name: str
    latest_version: str | None
    num_versions: int
    aliases: dict[str, str]
    updated: datetime | None
    description: str


def _when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000) if ms else None


# --------------------------------------------------------------------------- references


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` / ``NAME/VERSION`` / ``NAME`` (optionally prefixed ``models:/``) →
    ``(name, alias, version)``; a bare NAME means its ``champion``."""
    text = ref.removeprefix("models:/").strip()
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias:
            raise RegistryError(f"{ref!r}: expected NAME@ALIAS")
        return name, alias, None
    if "/" in text:
        name, _, version = text.rpartition("/")
        if not name or not version.isdigit():
            raise RegistryError(f"{ref!r}: expected NAME/VERSION with a numeric version")
        return name, None, version
    if not text:
        raise RegistryError(f"{ref!r}: empty model reference")
    return text, CHAMPION, None


def model_uri(name: str, alias: str | None = None, version: str | int | None = None) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias and version")
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


# --------------------------------------------------------------------------- writing


def check_model_name(name: str) -> str:
    """``name`` if it can be a registered model name here, before any work is done.

    MLflow refuses ``/`` and ``:`` and empty names; ``@`` is refused too, since
    ``models:/NAME@ALIAS`` could not name it; surrounding spaces are refused as a likely typo.

    Raises:
        ValueError: naming the name and the rule (the CLI exits 2).
    """
    if not name or name != name.strip() or any(c in name for c in "/:@"):
        raise ValueError(
            f"invalid registered model name {name!r}: must be non-empty, without surrounding "
            "spaces, and without '/', ':' or '@'"
        )
    return name


def register(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    uri: str | None = None,
    await_s: int = 300,
    description: str | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created if needed), with
    ``description`` (what the version is, in words) when given.

    Args:
        model_uri: ``models:/<model_id>`` or ``runs:/<run_id>/<artifact>``.
        name: Registered model name, e.g. ``bratslab-ssa``.
        tags: Version tags; values are stored as strings (metrics like ``tta/dice_mean`` as
            their repr, so :func:`promote_if_better` can compare them).
    The sha256 of the model directory's ``model.pt`` and ``model.json`` (downloaded from the
    store, so what is hashed is what was stored) become version tags too.

    Returns:
        The new version number, as a string (MLflow's type for versions).
    """
    check_model_name(name)
    uri = tracking_uri(uri)
    str_tags = {k: _tag_value(v) for k, v in (tags or {}).items()}
    str_tags.update(source_hashes(model_uri, uri=uri))
    # MLflow resolves ``models:/<model_id>`` sources through its *global* tracking URI.
    with global_uris(uri):
        mv = mlflow.register_model(model_uri, name, await_registration_for=await_s, tags=str_tags)
    if description:
        client(uri).update_model_version(name, mv.version, description=description)
    log.info("registered %s as %s version %s", model_uri, name, mv.version)
    return str(mv.version)


def source_hashes(model_uri: str, *, uri: str | None = None) -> dict[str, str]:
    """``{hash tag: sha256}`` of the model directory stored under ``model_uri``; empty (with a
    warning) when the source holds no bratslab model directory (a foreign MLflow model).

    A logged model's files are first checked against the sha256 tags it was logged with, so
    files changed in the artifact store between logging and registering are refused
    (:class:`~bratslab.tracking.model_store.ModelIntegrityError`) rather than registered."""
    from bratslab.tracking.logged_hashes import logged_hashes

    model_id = _model_id_from(model_uri)
    logged = logged_hashes(model_id, uri=uri, ref=model_uri) if model_id else {}
    with tempfile.TemporaryDirectory(prefix="bratslab-hash-") as tmp:
        local = download_artifacts(model_uri, tmp, uri)
        if not any(is_model_dir(p.parent) for p in local.rglob("model.json")):
            log.warning("%s holds no model.pt + model.json: registered without hashes", model_uri)
            return {}
        found = find_model_dir(local, model_uri)
        if logged:
            _verify(found, logged, model_uri)
        return model_hashes(found)


def _tag_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def logged_model_of_run(run_id: str, *, uri: str | None = None) -> str:
    """``models:/<model_id>`` of the model a run logged (a train run logs its best checkpoint).

    A resumed run can have logged several: the newest READY one is taken (one still PENDING
    or FAILED never finished uploading).

    Raises:
        RegistryError: no such run, or the run logged no finished model.
    """
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"no run {run_id!r} in {tracking_uri(uri)}") from None
    models = c.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if not ready:
        raise RegistryError(
            f"run {run_id} ({run.info.run_name}) has no logged model"
            + (f" that finished logging ({len(models)} pending or failed)" if models else "")
            + "; training logs one when tracking.log_model is true"
        )
    newest = max(ready, key=lambda m: m.creation_timestamp or 0)
    return f"models:/{newest.model_id}"


def register_logged_model(
    ref: str,
    name: str,
    alias: str | None = None,
    *,
    uri: str | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """Register a run's logged model (``ref``: a run id) or a logged model itself
    (``models:/<model_id>``) as a new version of ``name``; optionally point ``alias`` at it
    (through :func:`set_alias`'s guard, without comparing; ``promote_if_better`` compares).

    Returns:
        ``(version, model_uri)``.
    Raises:
        RegistryError: the run or logged model does not exist, or the run logged no model.
        ValueError: ``ref`` is neither a run id nor ``models:/<model_id>``.
        AliasRefusedError: the new version (registered) has no finite selection metric.
    """
    check_model_name(name)
    ref = ref.strip()
    if _RUN_ID.fullmatch(ref):
        source = logged_model_of_run(ref, uri=uri)
    elif (model_id := _model_id_from(ref)) is not None:
        try:
            client(uri).get_logged_model(model_id)
        except MlflowException:
            raise RegistryError(f"no logged model {model_id!r} in {tracking_uri(uri)}") from None
        source = ref
    else:
        raise ValueError(f"{ref!r}: expected a run id (32 hex digits) or models:/<model_id>")
    version = register(source, name, uri=uri)
    if alias:
        set_alias(name, version, alias, uri=uri, force=force)
    return version, source


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
        if _RUN_ID.fullmatch(ref):
            source = logged_model_of_run(ref, uri=uri)
        elif _model_id_from(ref) is not None:
            source = ref
        else:
            name, alias, version = parse_ref(ref)
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
    from bratslab.tracking.model_store import fetch_model_dir

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
    from bratslab.tracking import mlflow_runs
    from bratslab.tracking.model_store import log_model_dir, write_ensemble_dir

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
    from bratslab.tracking import mlflow_runs

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


def set_alias(
    name: str,
    version: str | int,
    alias: str = CHAMPION,
    *,
    uri: str | None = None,
    force: bool = False,
):
    """Point ``alias`` at ``version`` without comparing (last-writer-wins), once the version
    passes :func:`bratslab.tracking.alias_guard.check_alias_target` (a finite selection
    metric; ``force`` only warns).

    A choice made by hand ends any running contest for the alias: the candidate marks of
    :func:`promote_if_better` are cleared, so a later promotion compares against this holder
    only, rather than re-promoting an earlier candidate."""
    c = client(uri)
    info = get_version(name, version=version, uri=uri)  # a clear error for a missing version
    check_alias_target(info, alias, force=force)
    c.set_registered_model_alias(name, alias, str(version))
    for mv in c.search_model_versions(_name_filter(name)):
        if CANDIDATE_TAG + alias in (mv.tags or {}):
            c.delete_model_version_tag(name, str(mv.version), CANDIDATE_TAG + alias)
    log.info("%s@%s -> version %s", name, alias, version)


def promote_if_better(
    name: str,
    version: str | int,
    metric: str,
    mode: str = "max",
    alias: str = CHAMPION,
    *,
    uri: str | None = None,
) -> bool:
    """Move ``alias`` to ``version`` only if it beats the version holding it now.

    The metric is looked up per version by :func:`version_metric` (a version tag first, then
    the logged model's metrics, then its source run's). Ties keep the current holder. A
    holder without the metric is replaced. Safe against concurrent promoters (see the module
    docstring): the alias ends on the best of them.

    Returns:
        True when ``alias`` points at ``version`` once settled (moved, or already there).
    Raises:
        RegistryError: ``version`` does not exist.
        AliasRefusedError: it has no finite value for ``metric`` (the alias guard).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    candidate = get_version(name, version=version, uri=uri)
    new = check_alias_target(candidate, alias, metric=metric)
    with _promotion_lock(uri):
        mark = json.dumps({"t": time.time(), "metric": metric, "mode": mode})
        client(uri).set_model_version_tag(name, candidate.version, CANDIDATE_TAG + alias, mark)
        holder = _settle(name, alias, metric, mode, uri=uri)
    if holder != candidate.version:
        log.info(
            "%s v%s (%s=%.4f) does not beat %s v%s: alias %r stays",
            name, version, metric, new, alias, holder, alias,
        )  # fmt: skip
        return False
    log.info("%s@%s -> version %s (%s=%.4f)", name, alias, candidate.version, metric, new)
    return True


@contextmanager
def _promotion_lock(uri: str | None):
    """One promoter at a time on an embedded SQLite store (a file lock beside the database);
    a server store relies on :func:`_settle` alone."""
    db = sqlite_path(tracking_uri(uri))
    if db is None:
        yield
        return
    from filelock import FileLock

    with FileLock(str(db) + ".promote.lock", timeout=600):
        yield


def _better(a: float | None, b: float | None, mode: str) -> bool:
    """``a`` strictly beats ``b``; a missing or non-finite value loses to any finite one."""
    if a is None or not math.isfinite(a):
        return False
    if b is None or not math.isfinite(b):
        return True
    return a > b if mode == "max" else a < b


def _candidates(name: str, alias: str, metric: str, mode: str, uri: str | None) -> list[str]:
    """Versions marked as candidates for ``alias`` (same metric and mode) within the window."""
    now = time.time()
    out = []
    for mv in client(uri).search_model_versions(_name_filter(name)):
        try:
            mark = json.loads((mv.tags or {}).get(CANDIDATE_TAG + alias, ""))
        except ValueError:
            continue
        if (
            isinstance(mark, dict)
            and (mark.get("metric"), mark.get("mode")) == (metric, mode)
            and now - float(mark.get("t", 0)) <= CANDIDATE_WINDOW_S
        ):
            out.append(str(mv.version))
    return out


def _settle(name: str, alias: str, metric: str, mode: str, *, uri: str | None) -> str:
    """Compare, set, re-read until ``alias`` holds the best recent candidate (or a holder at
    least as good); returns the version it holds then."""
    c = client(uri)
    for _ in range(_SETTLE_ROUNDS):
        try:
            holder = get_version(name, alias=alias, uri=uri)
        except RegistryError:
            holder = None
        best, best_value = None, None
        for v in _candidates(name, alias, metric, mode, uri):
            value = get_version(name, version=v, uri=uri).metrics.get(metric)
            if value is not None and (best is None or _better(value, best_value, mode)):
                best, best_value = v, value
        held = holder.metrics.get(metric) if holder is not None else None
        if best is None or (holder is not None and not _better(best_value, held, mode)):
            return holder.version if holder is not None else ""
        try:
            c.set_registered_model_alias(name, alias, best)
        except MlflowException as e:
            # Another promoter wrote the alias row at the same moment (a unique-constraint
            # conflict on a database store): re-read and compare again in the next round.
            log.info("%s@%s: concurrent alias write (%s); re-reading", name, alias, e.error_code)
    raise RegistryError(f"{name}@{alias}: did not settle after {_SETTLE_ROUNDS} rounds")


# --------------------------------------------------------------------------- reading


def _name_filter(name: str) -> str:
    escaped = name.replace("'", "\\'")
    return f"name='{escaped}'"


def _numeric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith(("bratslab.sha256.", CANDIDATE_TAG)):  # bookkeeping, not metrics
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _model_id_from(source: str | None) -> str | None:
    """``models:/m-abc`` (a logged model's URI, MLflow 3) → ``m-abc``."""
    rest = (source or "").removeprefix("models:/")
    return rest if rest != (source or "") and rest.startswith("m-") and "/" not in rest else None


def _describe(mv, *, uri: str | None) -> VersionInfo:
    c = client(uri)
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    # Lowest precedence first: the source run, then the logged model, then version tags.
    if mv.run_id:
        try:
            run = c.get_run(mv.run_id)
            metrics.update(run.data.metrics)
            params.update(run.data.params)
        except MlflowException:
            log.warning("%s v%s: source run %s is gone", mv.name, mv.version, mv.run_id)
    for m in getattr(mv, "metrics", None) or []:
        metrics[m.key] = m.value
    for p in getattr(mv, "params", None) or []:
        params[p.key] = p.value
    tags = dict(mv.tags or {})
    metrics.update(_numeric_tags(tags))
    try:
        download = c.get_model_version_download_uri(mv.name, mv.version)
    except MlflowException:
        download = mv.source or ""
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=list(mv.aliases or []),
        status=str(mv.status),
        created=_when(mv.creation_timestamp),
        source=mv.source or "",
        download_uri=download,
        run_id=mv.run_id,
        model_id=getattr(mv, "model_id", None) or _model_id_from(mv.source),
        description=mv.description or "",
        tags=tags,
        metrics=metrics,
        params=params,
    )


def get_version(
    name: str,
    alias: str | None = None,
    version: str | int | None = None,
    *,
    uri: str | None = None,
) -> VersionInfo:
    """A registered version by ``alias`` or ``version`` (exactly one), with its metrics (source
    run, logged model and numeric version tags merged), params, source run and artifact URIs.

    Raises:
        RegistryError: the model, version or alias does not exist.
    """
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias and version")
    c = client(uri)
    try:
        if alias is not None:
            mv = c.get_model_version_by_alias(name, alias)
        else:
            mv = c.get_model_version(name, str(version))
    except MlflowException as e:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        known = ", ".join(m.name for m in c.search_registered_models(max_results=20)) or "none"
        raise RegistryError(
            f"registered model {name!r} has no {what} "
            f"(store {tracking_uri(uri)}; registered models: {known}): {e.message}"
        ) from None
    return _describe(mv, uri=uri)


def version_metric(name: str, version: str | int, metric: str, *, uri: str | None = None):
    """The value of ``metric`` for a version, or None (see :func:`get_version`)."""
    return get_version(name, version=version, uri=uri).metrics.get(metric)


def source_run_id(model_uri: str, *, uri: str | None = None) -> str | None:
    """The run that logged a model: ``models:/<model_id>`` (a logged model), ``models:/NAME@A``
    or ``models:/NAME/V`` (a registered version), or ``runs:/<run_id>/...``.

    Raises:
        RegistryError: the model, version or alias does not exist.
    """
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0] or None
    model_id = _model_id_from(model_uri)
    if model_id is not None:
        try:
            return client(uri).get_logged_model(model_id).source_run_id
        except MlflowException as e:
            raise RegistryError(f"{model_uri}: {e.message}") from None
    name, alias, version = parse_ref(model_uri)
    return get_version(name, alias=alias, version=version, uri=uri).run_id


def list_versions(name: str, *, uri: str | None = None) -> list[VersionInfo]:
    """All versions of ``name``, newest first, each with the aliases pointing at it."""
    c = client(uri)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {tracking_uri(uri)}") from None
    # Search results carry no aliases (MLflow 3.17 SQL store); the registered model has them all.
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases if isinstance(model.aliases, dict) else {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(
        c.search_model_versions(_name_filter(name)), key=lambda v: int(v.version), reverse=True
    )
    infos = [_describe(v, uri=uri) for v in versions]
    for info in infos:
        info.aliases = sorted(set(info.aliases) | set(by_version.get(info.version, [])))
    return infos


def list_models(*, uri: str | None = None) -> list[ModelSummary]:
    """Every registered model with its latest version and aliases, sorted by name."""
    c = client(uri)
    out = []
    for rm in c.search_registered_models():
        versions = c.search_model_versions(_name_filter(rm.name))
        latest = max((int(v.version) for v in versions), default=None)
        aliases = rm.aliases if isinstance(rm.aliases, dict) else {}
        out.append(
            ModelSummary(
                name=rm.name,
                latest_version=str(latest) if latest is not None else None,
                num_versions=len(versions),
                aliases={k: str(v) for k, v in aliases.items()},
                updated=_when(rm.last_updated_timestamp),
                description=rm.description or "",
            )
        )
    return sorted(out, key=lambda m: m.name)
