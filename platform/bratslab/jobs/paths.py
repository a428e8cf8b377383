"""Paths in a submitted job mean what they meant on the client.

A job runs in a temporary copy of the project (Ray's ``working_dir``), so a relative path in its
spec or command line would be read inside that copy on the cluster, not where the user meant.
Every path-like value is therefore resolved once, here, on the submitting machine, into what the
cluster will read, and the job receives it verbatim:

* against a cluster on this machine, a relative path becomes the absolute path it names here
  (``data.store`` with the same rule as a local run: ``./NAME`` when it exists, else
  ``$BRATSLAB_HOME/NAME``);
* against a remote cluster, a relative path names nothing the cluster can see and is refused
  before anything is uploaded; object-store URIs (``s3://``), MLflow URIs (``models:/``,
  ``runs:/``) and absolute paths (a shared filesystem the cluster mounts) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bratslab.config import ConfigError, apply_overrides, load_yaml
from bratslab.settings import get_settings

#: Prefixes that are already cluster-wide names, never client-local folders.
SHARED_PREFIXES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://", "models:/", "runs:/")


def is_shared(value: str) -> bool:
    """True for a URI every node resolves the same way (object store, MLflow model URI)."""
    return value.startswith(SHARED_PREFIXES)


def _remote_refusal(what: str, value: str) -> ConfigError:
    return ConfigError(
        f"{what} {value!r} is a folder on this machine, which a remote cluster cannot see: "
        "upload it to object storage (`bratslab data preprocess RAW s3://bucket/prefix`, or "
        "copy it there) and use the s3:// URI, or give the absolute path of a shared "
        "filesystem the cluster mounts"
    )


def resolve_path(
    value: str,
    what: str,
    *,
    same_machine: bool,
    packed: Callable[[Path], str | None] | None = None,
) -> str:
    """``value`` as the cluster must read it (see the module docstring).

    ``packed`` maps a client path to its path inside the job's uploaded package (None when the
    package does not carry it): a remote job may name such a file relative to its own folder.

    Raises:
        ConfigError: a relative path for a remote cluster, outside the package.
    """
    if is_shared(value):
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if same_machine:
        return str(path.absolute())
    inside = packed(path.absolute()) if packed else None
    if inside is None:
        raise _remote_refusal(what, value)
    return inside


def _store_target(value: str, *, same_machine: bool) -> str | None:
    """Where the job must read ``data.store``; None leaves it to the cluster."""
    if is_shared(value):
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    here = path.absolute()
    if not same_machine:
        if here.exists():
            raise _remote_refusal("data.store", value)
        # Not on this machine: the name means the cluster's own $BRATSLAB_HOME/NAME.
        return None
    # The rule of a local run (DataSection.locate_store): ./NAME when it exists, else the work
    # folder's, which is also the job's (the work dir is forwarded to a same-machine cluster).
    return str(here if here.is_dir() else get_settings().home / path)


def spec_path_overrides(
    spec_path: Path, overrides: Sequence[str] = (), *, same_machine: bool
) -> list[str]:
    """``--set`` overrides that pin a job spec's path-like keys to what the cluster reads:
    ``data.store`` and a folder in ``model.init_from``.

    Raises:
        ConfigError: a client-local path that a remote cluster cannot see.
    """
    data = apply_overrides(load_yaml(spec_path), list(overrides))
    out = []
    store = (data.get("data") or {}).get("store")
    if isinstance(store, str):
        target = _store_target(store, same_machine=same_machine)
        if target is not None and target != store:
            out.append(f"data.store={target}")
    init_from = (data.get("model") or {}).get("init_from")
    if isinstance(init_from, str) and init_from and not is_shared(init_from):
        target = resolve_path(init_from, "model.init_from", same_machine=same_machine)
        if target != init_from:
            out.append(f"model.init_from={target}")
    return out


#: Parameters naming a job spec: specs travel with the job's package and are read from it.
SPEC_PARAMS = frozenset({"job"})
#: Parameters typed ``str`` (they also take URIs) that name a folder or model directory.
STR_PATH_PARAMS = frozenset({"model", "out"})


def _annotation(param):
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.25's own parameters
    return getattr(descriptor, "annotation", None)


def _path_params(command) -> list:
    """The parameters of a CLI command that name files or folders."""
    out = []
    for p in command.params:
        if p.name in SPEC_PARAMS:
            continue
        typed = _annotation(p) is Path or type(getattr(p, "type", None)).__name__ == "Path"
        if typed or p.name in STR_PATH_PARAMS:
            out.append(p)
    return out


def command_path_args(
    command,
    argv: Sequence[str],
    *,
    same_machine: bool,
    packed: Callable[[Path], str | None] | None = None,
) -> list[str]:
    """``argv`` with every relative path argument of ``command`` made absolute.

    ``command`` is the click command that ``argv`` (after its command path) is parsed by; only
    values of ``Path``-typed arguments and options are touched, in both ``--opt VALUE`` and
    ``--opt=VALUE`` form. ``packed``: see :func:`resolve_path`.

    Raises:
        ConfigError: a relative path for a remote cluster.
    """
    ctx = command.make_context("bratslab", list(argv), resilient_parsing=True)
    # Keyed by the normalised path (click hands back Path objects: "raw/" comes back as "raw").
    values: dict[str, str] = {}
    for param in _path_params(command):
        given = ctx.params.get(param.name)
        for item in given if isinstance(given, (list, tuple)) else [given]:
            if item is None or is_shared(str(item)):
                continue
            what = param.opts[0] if param.opts[0].startswith("-") else param.name.upper()
            values[str(Path(item))] = resolve_path(
                str(item), what, same_machine=same_machine, packed=packed
            )

    def resolved(token: str) -> str | None:
        return values.get(str(Path(token))) if token and not is_shared(token) else None

    out = []
    for token in argv:
        opt, sep, rest = token.partition("=")
        if not token.startswith("-") and resolved(token) is not None:
            out.append(resolved(token))
        elif sep and opt.startswith("--") and resolved(rest) is not None:
            out.append(f"{opt}={resolved(rest)}")
        else:
            out.append(token)
    return out
