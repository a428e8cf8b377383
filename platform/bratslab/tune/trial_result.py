"""One row of a sweep's results: a trial's parameters, progress, best checkpoint and scores.

Built by :func:`bratslab.tune.tuner.trial_rows` (Tune trials) and
:func:`bratslab.tune.followup.run_upkern` (the UpKern follow-up); the sweep fills in the MLflow
run id and marks ASHA stops; :mod:`bratslab.tune.selection` adds the TTA re-evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

TrialStatus = Literal["TERMINATED", "ERROR", "STOPPED_EARLY"]
TRIAL_STATUSES: tuple[str, ...] = get_args(TrialStatus)


@dataclass
class TrialResult:
    """What one trial of a sweep produced.

    Attributes:
        trial_id: Tune's trial id (``upkern-k5`` for the UpKern follow-up).
        status: ``TERMINATED`` (ran to its end or was stopped by Tune), ``ERROR`` (raised), or
            ``STOPPED_EARLY`` (ASHA stopped it before its last epoch; set once Tune is done).
        completed: the trial's completion marker (``trials/<id>.json``) exists.
        iterations: results the trial reported (one per epoch with the bratslab trainer).
        best_metric: best value of the sweep's ``metric`` over the trial, or None.
        best_checkpoint: the checkpoint directory with that value (still on disk), or None.
        params: the sampled parameters as Tune's config holds them (``{dotted key: value}``).
        error: the start of the error message of a failed trial.
        mlflow_run_id: the trial's MLflow run (nested under the sweep's parent run), or None.
        tta: ``tta/*`` metrics of the TTA re-evaluation; empty unless the trial was a candidate.
    """

    trial_id: str
    status: TrialStatus = "TERMINATED"
    completed: bool = False
    iterations: int = 0
    best_metric: float | None = None
    best_checkpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    mlflow_run_id: str | None = None
    tta: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in TRIAL_STATUSES:
            raise ValueError(
                f"trial {self.trial_id}: status {self.status!r} is not one of {TRIAL_STATUSES}"
            )

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (a deep copy): every field by name."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: an unknown key, a missing ``trial_id`` or an unknown status.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"trial result: unknown key(s) {unknown}")
        if "trial_id" not in data:
            raise ValueError("trial result: `trial_id` is missing")
        values = dict(data)
        values["params"] = dict(values.get("params") or {})
        values["tta"] = dict(values.get("tta") or {})
        return cls(**values)
