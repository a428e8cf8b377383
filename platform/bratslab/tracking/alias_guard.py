"""The one check every alias move goes through: no version without a finite selection metric.

An alias (``champion``) is what ``predict --model models:/NAME@champion`` serves, so a version
that was never evaluated, or whose evaluation diverged (NaN), must not get one by accident.
:func:`check_alias_target` is called by :func:`bratslab.tracking.registry.set_alias` (``models
promote``, ``models register --alias``, ``models register --ensemble --alias``) and by
:func:`bratslab.tracking.registry.promote_if_better` (``promote --if-better``, a sweep's
selection); nothing else in bratslab writes an alias.

The metric checked is the one the caller compares on (``--if-better METRIC``, a sweep's
``selection_metric``), else the version's ``bratslab.selection_metric`` tag (set by a sweep, and
``cv/mean/val/dice_mean`` on an ensemble of a cross-validation run), else ``tta/dice_mean``
(what ``bratslab evaluate-model`` logs). ``force`` moves the alias anyway, with a warning.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

SELECTION_TAG = "bratslab.selection_metric"  # version tag: the metric that chose this version
DEFAULT_SELECTION = "tta/dice_mean"


class AliasRefusedError(ValueError):
    """An alias would point at a version whose selection metric is missing or not finite."""


def selection_metric(info: Any, metric: str | None = None) -> str:
    """The metric an alias move of ``info`` (a :class:`~bratslab.tracking.registry.VersionInfo`)
    is judged on: ``metric`` if given, else its selection tag, else ``tta/dice_mean``."""
    return metric or (info.tags or {}).get(SELECTION_TAG) or DEFAULT_SELECTION


def check_alias_target(
    info: Any, alias: str, *, metric: str | None = None, force: bool = False
) -> float | None:
    """Refuse to point ``alias`` at ``info`` when its selection metric is missing or not finite.

    Args:
        info: the version (``name``, ``version``, ``tags``, ``metrics`` as merged by
            :func:`bratslab.tracking.registry.get_version`).
        metric: the metric the caller compares on; None: :func:`selection_metric`.
        force: log a warning instead of refusing.
    Returns:
        The metric's value (None or non-finite only with ``force``).
    Raises:
        AliasRefusedError: one line naming the version, the alias and the metric's state.
    """
    key = selection_metric(info, metric)
    value = (info.metrics or {}).get(key)
    if value is not None and math.isfinite(value):
        return value
    what = "is missing" if value is None else f"is {value}"
    message = (
        f"{info.name} version {info.version}: no finite value for metric {key!r} ({what}); "
        f"refusing to point alias {alias!r} at it (an unevaluated or failed model would be "
        "served)"
    )
    if not force:
        raise AliasRefusedError(message + "; evaluate it first, or pass --force")
    log.warning("%s; moving it anyway (force)", message)
    return value
