"""Run ids as people type them: the full 32 hex digits, or a unique prefix of them.

Tables show the first :data:`SHORT` characters of a run id (as git shows commits); every command
that takes a run id accepts such a prefix back, and names the candidates when it is ambiguous.
"""

from __future__ import annotations

import re

from mlflow.entities import ViewType

from bratslab.tracking.mlflow_runs import client, tracking_uri

SHORT = 8  # characters of a run id that tables show
MIN_PREFIX = 4
FULL = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},31}}")
_PAGE = 10_000  # runs per search request while matching a prefix


def short(run_id: str) -> str:
    """The run id as tables show it."""
    return run_id[:SHORT]


def is_run_ref(ref: str) -> bool:
    """True for a full run id or a prefix of one (hex, at least :data:`MIN_PREFIX` long)."""
    return bool(FULL.fullmatch(ref) or _PREFIX.fullmatch(ref))


def resolve_run_id(ref: str, *, uri: str | None = None) -> str:
    """The full run id that ``ref`` names: itself when it has 32 hex digits, else the one run
    (in any experiment, deleted ones included) whose id starts with it.

    Raises:
        LookupError: no run, or several runs, start with ``ref`` (the message says which).
    """
    ref = ref.strip().lower()
    if FULL.fullmatch(ref):
        return ref
    if not _PREFIX.fullmatch(ref):
        raise LookupError(f"{ref!r}: a run id is 32 hex digits (or a unique prefix of ≥ 4)")
    c = client(uri)
    experiments = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    matches: list[str] = []
    token = None
    while experiments:
        page = c.search_runs(
            experiments, run_view_type=ViewType.ALL, max_results=_PAGE, page_token=token
        )
        matches += [r.info.run_id for r in page if r.info.run_id.startswith(ref)]
        token = page.token
        if not token:
            break
    return only_match(ref, matches, tracking_uri(uri))


def only_match(ref: str, matches: list[str], where: str) -> str:
    """The one run id in ``matches`` (those starting with ``ref``, found in store ``where``).

    Raises:
        LookupError: none, or more than one (the first few are named).
    """
    if not matches:
        raise LookupError(f"no run {ref!r} in {where}")
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5])
        raise LookupError(f"{ref!r} is the start of {len(matches)} run ids ({shown}): give more")
    return matches[0]
