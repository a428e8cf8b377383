"""``bratslab spec schema|explain``: the job spec's keys, documented from the typed configs.

The source of truth is :class:`bratslab.jobs.spec.JobSpec` itself (its pydantic fields, their types,
defaults, constraints and ``Field(description=...)``), so what these commands print cannot drift
from what ``load_job`` accepts.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

spec_app = typer.Typer(
    help="Document the job spec (jobs/*.yaml): its JSON Schema, or every key with its type, "
    "default and meaning.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``spec`` group to the root app."""
    app.add_typer(spec_app, name="spec")


@dataclass(frozen=True)
class KeyDoc:
    """One documented key of the spec. ``section`` keys hold further keys."""

    key: str
    type: str
    default: str
    description: str
    constraints: str = ""
    section: bool = False


def type_name(annotation: typing.Any) -> str:
    """A readable type: ``int | None``, ``'unet' | 'segresnet'``, ``list[int]``."""
    if annotation is type(None):
        return "null"
    if annotation is Ellipsis:
        return "..."
    if annotation is typing.Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def section_model(annotation: typing.Any) -> type[BaseModel] | None:
    """The config class of a section field (``X`` or ``X | None``), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    models = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    try:
        value = field.get_default(call_default_factory=True)
    except TypeError:  # a factory that needs the other fields' values
        return "computed"
    if isinstance(value, BaseModel):
        return "{...}"
    return json.dumps(value, default=str)


_BOUNDS = (
    ("gt", ">"),
    ("ge", ">="),
    ("lt", "<"),
    ("le", "<="),
    ("min_length", "min length"),
    ("max_length", "max length"),
    ("pattern", "pattern"),
)


def _constraints(field: FieldInfo) -> str:
    """``> 0``, ``>= 1``, ``pattern ^...$`` from the field's metadata."""
    parts = []
    for meta in field.metadata:
        for attr, word in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value}")
    return ", ".join(parts)


def spec_keys(model: type[BaseModel], prefix: str = "") -> list[KeyDoc]:
    """Every key of ``model``, depth first, dotted (``training.optimizer.lr``)."""
    out: list[KeyDoc] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = section_model(field.annotation)
        if sub is None:
            default = _default(field)
        elif field.is_required():
            default = "required"
        else:  # a section with defaults, or an optional one (``sweep``)
            default = "null" if field.default is None else "{...}"
        out.append(
            KeyDoc(
                key=key,
                type=type_name(field.annotation) if sub is None else "section",
                default=default,
                description=" ".join((field.description or "").split()),
                constraints=_constraints(field),
                section=sub is not None,
            )
        )
        if sub is not None:
            out.extend(spec_keys(sub, key + "."))
    return out


def select(docs: list[KeyDoc], key: str | None) -> list[KeyDoc]:
    """``key`` and everything under it (all keys when None).

    Raises:
        KeyError: no such key; the message names it, its first unknown part and the keys that
            exist at that level.
    """
    if not key:
        return docs
    key = key.strip().strip(".")
    chosen = [d for d in docs if d.key == key or d.key.startswith(key + ".")]
    if chosen:
        return chosen
    known = {d.key for d in docs}
    parts = key.split(".")
    depth = 0
    while depth < len(parts) and ".".join(parts[: depth + 1]) in known:
        depth += 1
    parent = ".".join(parts[:depth])
    prefix = parent + "." if parent else ""
    children = [
        d.key[len(prefix) :] for d in docs if d.key.startswith(prefix) and d.key.count(".") == depth
    ]
    where = f"under {parent!r}" if parent else "at the top level"
    raise KeyError(
        f"unknown job-spec key {key!r}: no {parts[depth]!r} {where} "
        f"(keys there: {', '.join(children) or 'none, it is a value'})"
    )


def format_doc(doc: KeyDoc) -> str:
    """``key: type = default  [constraints]`` and the description indented below it."""
    if doc.section:
        extra = {"null": " (optional)", "required": " (required)"}.get(doc.default, "")
        head = f"{doc.key}: section{extra}"
    elif doc.default == "required":
        head = f"{doc.key}: {doc.type} (required)"
    else:
        head = f"{doc.key}: {doc.type} = {doc.default}"
    if doc.constraints:
        head += f"  [{doc.constraints}]"
    return head + (f"\n    {doc.description}" if doc.description else "")


@spec_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a job spec (for editors and validators)."""
    from bratslab.jobs.spec import JobSpec

    typer.echo(json.dumps(JobSpec.model_json_schema(), indent=2))


@spec_app.command("explain")
def explain(
    key: str | None = typer.Argument(
        None, help="A dotted key, e.g. training.optimizer or training.optimizer.lr; all if omitted."
    ),
) -> None:
    """Print the job spec's keys with type, default, constraints and meaning.

    All keys, or KEY and the keys under it. Each can be set in the YAML file or with
    `--set KEY=VALUE`; an unknown KEY exits 2.
    """
    from bratslab.jobs.spec import JobSpec

    try:
        docs = select(spec_keys(JobSpec), key)
    except KeyError as e:
        typer.secho(e.args[0], fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo("\n".join(format_doc(d) for d in docs))
