"""Search spaces: a declarative YAML file → an Optuna define-by-run function.

A space file names dotted job-spec keys and how to sample them::

    parameters:
      model.arch:                       # a categorical parameter
        type: choice
        values: [unet, segresnet, mednext]
      model.mednext.kernel_size:        # conditional: only sampled for MedNeXt trials
        type: choice
        values: [3, 5, 7]
        when: {model.arch: mednext}
      training.optimizer.lr:
        type: loguniform
        low: 1.0e-4
        high: 3.0e-3
      model.mednext.blocks:
        type: int
        low: 1
        high: 3
    fixed:                              # applied to every trial
      training.epochs: 4

Types: ``choice`` (``values``), ``uniform`` (``low``, ``high``, optional ``step``), ``loguniform``
(``low`` > 0, ``high``), ``int`` (``low``, ``high`` inclusive, optional ``step``, ``log``). ``when``
maps an earlier *choice* parameter to one allowed value or a list of them. Conditional spaces are
why this is a define-by-run function (:meth:`SearchSpace.suggest`) rather than a static Tune
space: Optuna samples a parameter only on trials where its condition holds, and TPE models it
from those trials alone.

Every problem is a :class:`~bratslab.config.ConfigError` naming the file and the parameter.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from bratslab import config
from bratslab.config import ConfigError, StrictModel, load_yaml, validate

T = TypeVar("T", bound=BaseModel)

Scalar = (bool, int, float, str, type(None))


class _ParamBase(StrictModel):
    when: dict[str, Any] | None = Field(
        default=None,
        description="Sample only when each named earlier choice parameter has one of the values.",
    )

    def conditions(self) -> dict[str, list[Any]]:
        """``when`` with every right-hand side as a list of allowed values."""
        return {k: list(v) if isinstance(v, list) else [v] for k, v in (self.when or {}).items()}


class ChoiceParam(_ParamBase):
    """One of a list of values (numbers, strings, booleans or lists such as patch sizes)."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1, description="The candidate values.")

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceParam:
        labels = [_label(v) for v in self.values]
        if len(set(labels)) != len(labels):
            raise ValueError("values must be distinct")
        return self

    def corners(self) -> list[Any]:
        return list(self.values)


class UniformParam(_ParamBase):
    """A float drawn uniformly from [low, high] (on a grid of ``step`` if given)."""

    type: Literal["uniform"]
    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")
    step: float | None = Field(default=None, gt=0, description="Grid spacing, if any.")

    @model_validator(mode="after")
    def _order(self) -> UniformParam:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]


class LogUniformParam(_ParamBase):
    """A positive float drawn uniformly in log space from [low, high]."""

    type: Literal["loguniform"]
    low: float = Field(gt=0, description="Lower bound (inclusive, > 0).")
    high: float = Field(gt=0, description="Upper bound (inclusive).")

    @model_validator(mode="after")
    def _order(self) -> LogUniformParam:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(_ParamBase):
    """An integer from [low, high] (inclusive), every ``step``; ``log`` samples in log space."""

    type: Literal["int"]
    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (inclusive).")
    step: int = Field(default=1, ge=1, description="Spacing of the allowed integers.")
    log: bool = Field(default=False, description="Sample in log space (needs low >= 1, step 1).")

    @model_validator(mode="after")
    def _order(self) -> IntParam:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log sampling needs low >= 1 and step 1")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]


Param = Annotated[
    ChoiceParam | UniformParam | LogUniformParam | IntParam, Field(discriminator="type")
]
PARAM_TYPES = ("choice", "uniform", "loguniform", "int")


class _ParamHolder(StrictModel):
    param: Param


def _label(value: Any) -> Any:
    """How a choice value is shown to Optuna: scalars as is, anything else as JSON text.

    Optuna's categorical distribution takes only None/bool/int/float/str, so a list value such as
    a patch size ``[64, 64, 64]`` travels as the string ``"[64, 64, 64]"`` and is decoded back.
    """
    return value if isinstance(value, Scalar) else json.dumps(value)


def set_dotted(data: dict[str, Any], key: str, value: Any, *, source: str = "") -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"`` with a typed value (no YAML round
    trip, which would turn ``1e-05`` into a string); errors name the parameter."""
    config.set_dotted(data, key, copy.deepcopy(value), where=f"{source}: parameter {key!r}")


class SearchSpace:
    """A validated search space; :meth:`suggest` is the define-by-run function for Optuna."""

    def __init__(
        self, parameters: dict[str, Any], fixed: dict[str, Any], source: str = "search space"
    ):
        self.source = source
        self.parameters: dict[str, ChoiceParam | UniformParam | LogUniformParam | IntParam] = {}
        self.fixed = dict(fixed)
        for name, raw in parameters.items():
            self.parameters[name] = self._parse_param(name, raw)
        self._check_conditions()
        overlap = set(self.fixed) & set(self.parameters)
        if overlap:
            raise ConfigError(
                f"{source}: parameter {sorted(overlap)[0]!r} is both searched and fixed"
            )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Load and validate a space file; errors name the file and the parameter."""
        data = load_yaml(path)
        unknown = set(data) - {"parameters", "fixed", "description"}
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}")
        params = data.get("parameters") or {}
        fixed = data.get("fixed") or {}
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{path}: `parameters` must be a non-empty mapping")
        if not isinstance(fixed, dict):
            raise ConfigError(f"{path}: `fixed` must be a mapping of dotted keys to values")
        return cls(params, fixed, source=str(path))

    def _parse_param(self, name: str, raw: Any):
        where = f"{self.source}: parameter {name!r}"
        if not isinstance(name, str) or not name.strip("."):
            raise ConfigError(f"{self.source}: parameter names must be dotted job-spec keys")
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with `type` ({', '.join(PARAM_TYPES)})")
        kind = raw.get("type")
        if kind not in PARAM_TYPES:
            raise ConfigError(
                f"{where}: unknown type {kind!r}; expected one of {', '.join(PARAM_TYPES)}"
            )
        try:
            return _ParamHolder.model_validate({"param": raw}).param
        except ValidationError as e:
            problems = []
            for err in e.errors():
                loc = [str(p) for p in err["loc"][2:]]  # drop "param" and the union tag
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{'.'.join(loc) + ': ' if loc else ''}{msg}")
            raise ConfigError(f"{where}: " + "; ".join(problems)) from None

    def _check_conditions(self) -> None:
        seen: list[str] = []
        for name, p in self.parameters.items():
            for dep, allowed in p.conditions().items():
                where = f"{self.source}: parameter {name!r}: condition on {dep!r}"
                if dep not in self.parameters:
                    raise ConfigError(f"{where}: no such parameter")
                if dep not in seen:
                    raise ConfigError(f"{where}: {dep!r} must be declared before {name!r}")
                dep_p = self.parameters[dep]
                if not isinstance(dep_p, ChoiceParam):
                    raise ConfigError(f"{where}: conditions may only refer to choice parameters")
                labels = {_label(v) for v in dep_p.values}
                for v in allowed:
                    if _label(v) not in labels:
                        raise ConfigError(f"{where}: {v!r} is not one of {dep_p.values}")
            seen.append(name)

    # -- sampling -----------------------------------------------------------------------------

    def _active(self, p: _ParamBase, chosen: dict[str, Any]) -> bool:
        return all(
            dep in chosen and _label(chosen[dep]) in {_label(v) for v in allowed}
            for dep, allowed in p.conditions().items()
        )

    def suggest(self, trial) -> dict[str, Any]:
        """Define-by-run function for ``OptunaSearch(space=...)``.

        Args:
            trial: an ``optuna.Trial`` (or Ray's wrapper around one).

        Returns:
            ``{dotted key: value}`` of the sampled parameters; a parameter whose ``when`` does not
            hold is absent. Non-scalar choices come back as their JSON label; :meth:`decode`
            turns them back into values.
        """
        chosen: dict[str, Any] = {}
        for name, p in self.parameters.items():
            if not self._active(p, chosen):
                continue
            if isinstance(p, ChoiceParam):
                label = trial.suggest_categorical(name, [_label(v) for v in p.values])
                chosen[name] = self._decode_choice(p, label)
            elif isinstance(p, UniformParam):
                chosen[name] = trial.suggest_float(name, p.low, p.high, step=p.step)
            elif isinstance(p, LogUniformParam):
                chosen[name] = trial.suggest_float(name, p.low, p.high, log=True)
            else:
                chosen[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        # Ray's OptunaSearch merges this return value over the captured suggestions; returning
        # nothing keeps Optuna's labels in the Tune config (decoded again by `decode`).
        return {}

    def encode_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """A ``{dotted parameter: value}`` point as Optuna params (choice values as labels).

        Raises:
            ConfigError: a key is not a parameter of this space.
        """
        unknown = sorted(set(point) - set(self.parameters))
        if unknown:
            names = ", ".join(unknown)
            raise ConfigError(f"sweep.search.initial_points: unknown parameter(s) {names}")
        return {
            k: _label(v) if isinstance(self.parameters[k], ChoiceParam) else v
            for k, v in point.items()
        }

    @staticmethod
    def _decode_choice(p: ChoiceParam, label: Any) -> Any:
        for v in p.values:
            if _label(v) == label:
                return copy.deepcopy(v)
        raise ConfigError(f"value {label!r} is not one of {p.values}")

    def decode(self, config: dict[str, Any]) -> dict[str, Any]:
        """Tune config (Optuna labels) → ``{dotted key: value}`` with list choices decoded.

        Unknown keys are an error: a resumed sweep whose space file changed must not silently
        apply parameters the space no longer has.
        """
        out = {}
        for name, value in config.items():
            p = self.parameters.get(name)
            if p is None:
                raise ConfigError(f"{self.source}: trial parameter {name!r} is not in the space")
            out[name] = self._decode_choice(p, value) if isinstance(p, ChoiceParam) else value
        return out

    # -- applying to a job spec ---------------------------------------------------------------

    def apply(self, base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of the job dict ``base`` with ``fixed`` then ``params`` set."""
        data = copy.deepcopy(base)
        for key, value in {**self.fixed, **params}.items():
            set_dotted(data, key, value, source=self.source)
        return data

    def corner_assignments(self) -> list[tuple[str, dict[str, Any]]]:
        """One assignment per (parameter, extreme/candidate value), conditions satisfied.

        Used to validate a space against the job spec before any trial starts: every parameter
        name and every candidate value is tried once with its conditions made true.
        """
        out = []
        for name, p in self.parameters.items():
            for value in p.corners():
                assignment = self._with_conditions(p)
                assignment[name] = value
                out.append((name, assignment))
        return out

    def _with_conditions(self, p: _ParamBase) -> dict[str, Any]:
        assignment: dict[str, Any] = {}
        for dep, allowed in p.conditions().items():
            assignment.update(self._with_conditions(self.parameters[dep]))
            assignment[dep] = allowed[0]
        return assignment

    def check_against(self, model: type[T], base: dict[str, Any], source: str = "job") -> None:
        """Validate every corner assignment as ``model``; the error names the parameter.

        Raises:
            ConfigError: ``<space>: parameter 'x.y' = v does not fit <source>: ...``.
        """
        try:
            validate(model, self.apply(base, {}), source)
        except ConfigError as e:
            raise ConfigError(f"{self.source}: the `fixed` values do not fit {e}") from None
        for name, assignment in self.corner_assignments():
            try:
                validate(model, self.apply(base, assignment), source)
            except ConfigError as e:
                value = assignment[name]
                raise ConfigError(
                    f"{self.source}: parameter {name!r} = {value!r} does not fit {e}"
                ) from None

    def names(self) -> list[str]:
        return list(self.parameters)


def load_space(path: str | Path) -> SearchSpace:
    """Load a ``search_spaces/*.yaml`` file (see the module docstring for the format)."""
    return SearchSpace.from_file(path)
