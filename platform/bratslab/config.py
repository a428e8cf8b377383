"""Typed configs: strict pydantic models, YAML loading and dotted ``--set`` overrides.

Every stage receives one validated config object. Unknown keys are errors naming the offending
key; YAML holds data only, read as UTF-8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


def format_validation_error(
    err: ValidationError,
    source: str,
    overrides: list[str] | None = None,
    model: type[BaseModel] | None = None,
) -> str:
    """One line per bad key; a key set by a ``--set`` override names that override, and an
    unknown key of ``model`` suggests the closest known one (``did you mean training.epochs?``).
    """
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(model, loc)
        given = _override_for(key, overrides)
        lines.append(f"  --set {given}: {key}: {msg}" if given else f"  {key}: {msg}")
    return "\n".join(lines)


def _override_for(key: str, overrides: list[str] | None) -> str | None:
    """The last ``--set`` override that set ``key`` (or a section or value around it)."""
    for item in reversed(overrides or []):
        k = ".".join(p for p in item.partition("=")[0].strip().split(".") if p)
        if k == key or key.startswith(k + ".") or k.startswith(key + "."):
            return item
    return None


def _did_you_mean(model: type[BaseModel] | None, loc: list[str]) -> str:
    """``; did you mean a.b.c?`` for the known key of ``loc``'s section closest to its name."""
    import difflib

    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if cls is not None else None
        if field is None:
            return ""
        types = (field.annotation, *get_args(field.annotation))
        cls = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
    if cls is None or not loc:
        return ""
    close = difflib.get_close_matches(loc[-1], list(cls.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""


def parse_value(text: str) -> Any:
    """Interpret an override value as YAML (so ``3``, ``1e-4``, ``true``, ``[64,64,64]`` work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(data: dict[str, Any], key: str, value: Any, *, where: str = "") -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections as needed.

    ``where`` prefixes error messages (e.g. the override or file being applied).
    """
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"{where}: empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (in place; also returned)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, _, raw = item.partition("=")
        set_dotted(data, key, parse_value(raw), where=f"override {item!r}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: the problem and where (its own text spans several lines)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(err, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{problem} at {where}" + (f" ({context})" if context else "")
    text = str(err).splitlines()
    return text[0] if text else type(err).__name__


def _type_word(value: Any) -> str:
    return {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: one line naming the file: missing, unreadable, not UTF-8 text (a binary
            file, UTF-16), not YAML, or YAML whose top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    # Decoded here, not with the locale's encoding: specs are UTF-8 on every machine.
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "expected YAML"
        ) from None
    if "\x00" in text:  # UTF-16 without a byte-order mark, or another binary format
        raise ConfigError(f"{path}: binary file (contains NUL bytes); expected UTF-8 YAML")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    except ValueError as e:  # a value PyYAML matched but cannot build, e.g. 2020-13-45
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, not {_type_word(data)}")
    return data


def validate(
    model: type[T], data: dict[str, Any], source: str = "config", overrides: list[str] | None = None
) -> T:
    """Build ``model`` from ``data``; a :class:`ConfigError` lists every bad key (naming the
    ``--set`` override that set it, if one did)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, overrides, model)) from None


def load_config(model: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load a YAML file into ``model`` after applying dotted overrides."""
    data = apply_overrides(load_yaml(path), overrides)
    return validate(model, data, str(path), overrides)
