"""Moving an alias: by hand (:func:`set_alias`) or only when the version is better
(:func:`promote_if_better`), safe against concurrent promoters.

The registry has no compare-and-set and alias writes are last-writer-wins, so
:func:`promote_if_better` marks the version as a candidate for the alias (a version tag), then
compares, sets, re-reads and repeats until the alias holds the best of the candidates marked in
the last :data:`CANDIDATE_WINDOW_S` seconds. Whichever promoter writes last sees every candidate
that compared before its write, and any later candidate compares against that final write, so
no interleaving leaves a worse version holding the alias. On the embedded SQLite store the whole
sequence also runs under a file lock beside the database, one promoter at a time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from bratslab.tracking.alias_guard import check_alias_target
from bratslab.tracking.mlflow_runs import client, sqlite_path, tracking_uri
from bratslab.tracking.model_versions import (
    CANDIDATE_TAG,
    CHAMPION,
    RegistryError,
    get_version,
    name_filter,
)

log = logging.getLogger(__name__)


class PromotionUnsettled(RuntimeError):
    """Concurrent promoters kept rewriting the alias: the work failed, nothing was missing
    (a lookup failure is a :class:`RegistryError`)."""


CANDIDATE_WINDOW_S = 600.0  # promotions this recent take part in settling an alias
_SETTLE_ROUNDS = 20


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
    for mv in c.search_model_versions(name_filter(name)):
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
    for mv in client(uri).search_model_versions(name_filter(name)):
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
    raise PromotionUnsettled(f"{name}@{alias}: did not settle after {_SETTLE_ROUNDS} rounds")
