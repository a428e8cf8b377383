"""Where a sweep's Optuna study lives: SQLite beside the sweep, or a shared database.

``BRATSLAB_OPTUNA_STORAGE`` (:attr:`bratslab.settings.Settings.optuna_storage`) is any SQLAlchemy
URL, e.g. ``postgresql+psycopg://optuna:PW@host:5432/optuna`` (driver: ``bratslab[postgres]``).
Unset, each sweep keeps its study in ``optuna.db`` in its own folder.

The study is named after the sweep. In a shared database two sweeps of one name (started from
two work folders, say) would silently share a study, so a *new* sweep refuses a name the
database already holds. The sweep's manifest records where its study lives (password hidden),
and ``--resume NAME`` reattaches to that study: Tune's restored searcher reopens the storage it
was started with, and :func:`storage_for_resume` makes the rest of the sweep (plots, a searcher
built afresh when Tune never saved state) use the same one.
"""

from __future__ import annotations

import logging
from typing import Any

from bratslab.config import ConfigError
from bratslab.settings import Settings

log = logging.getLogger(__name__)

ENV_VAR = "BRATSLAB_OPTUNA_STORAGE"


def sqlite_beside(root) -> str:
    """The default storage: ``optuna.db`` in the sweep folder ``root`` (absolute)."""
    return f"sqlite:///{(root / 'optuna.db').resolve()}"


def describe(url: str | None) -> str | None:
    """``url`` with its password hidden (``***``): safe for logs, messages and manifests."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all: nothing to hide, open_storage will say so
        return url


def manifest_entry(url: str | None, study_name: str) -> dict[str, Any]:
    """What a new sweep's ``sweep.json`` records under ``optuna``.

    Args:
        url: the configured storage, or None for SQLite beside the sweep.
    """
    return {"storage": describe(url), "study": study_name}


def storage_for_resume(manifest: dict[str, Any], settings: Settings, source: str) -> str | None:
    """The storage a resumed sweep must use: the one its study was created in.

    Returns:
        the configured URL (with its password) when it names the recorded storage, or None
        when the sweep keeps its study in its own ``optuna.db`` (sweeps created before the
        setting existed included).
    Raises:
        ConfigError: the study is in a database that ``BRATSLAB_OPTUNA_STORAGE`` does not (or
            no longer) name; the recorded URL hides the password, so it cannot be reused as is.
    """
    recorded = (manifest.get("optuna") or {}).get("storage")
    current = settings.optuna_storage
    if recorded is None:
        if current:
            log.warning(
                "%s: this sweep keeps its Optuna study in its own optuna.db; %s (%s) is not "
                "used for it",
                source,
                ENV_VAR,
                describe(current),
            )
        return None
    if current is None or describe(current) != recorded:
        raise ConfigError(
            f"{source}: the sweep's Optuna study is in {recorded}; set {ENV_VAR} to that URL "
            f"to resume it (it is {describe(current) if current else 'unset'})"
        )
    return current


def open_storage(url: str):
    """An ``optuna.storages.RDBStorage`` on ``url`` (schema created if missing).

    Raises:
        ConfigError: ``url`` is not a SQLAlchemy URL, its driver is not installed, or the
            database cannot be reached; the message names the URL with its password hidden.
    """
    import optuna
    import sqlalchemy.exc

    # A long sweep leaves pooled connections idle between trials; servers and firewalls drop
    # those, and a pre-ping replaces a dead one instead of failing the next trial's write.
    kwargs = {} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    where = f"{ENV_VAR}={describe(url)}"
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as e:
        cause = e.__cause__ or e
        raise ConfigError(
            f"{where}: the database driver is not installed ({cause}); for PostgreSQL install "
            "`bratslab[postgres]` and write the URL as postgresql+psycopg://..."
        ) from e
    except sqlalchemy.exc.ArgumentError as e:  # includes an unknown dialect
        raise ConfigError(f"{where}: not a usable SQLAlchemy URL ({e})") from e
    except sqlalchemy.exc.OperationalError as e:
        first = str(e.orig or e).strip().splitlines()[0]
        raise ConfigError(f"{where}: cannot open the database ({first})") from e


def check_new_study(url: str, study_name: str, source: str) -> None:
    """Refuse a new sweep whose study name the shared storage ``url`` already holds.

    Raises:
        ConfigError: a study of that name exists (or the storage cannot be opened).
    """
    storage = open_storage(url)
    try:
        names = {s.study_name for s in storage.get_all_studies()}
    finally:
        storage.remove_session()
        storage.engine.dispose()
    if study_name in names:
        raise ConfigError(
            f"{source}: an Optuna study named {study_name!r} already exists in "
            f"{describe(url)}; give the sweep another sweep.name (resume an interrupted sweep "
            f"with --resume {study_name} from its work folder)"
        )
