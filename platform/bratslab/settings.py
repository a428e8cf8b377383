"""Where things live: embedded defaults on one machine, environment variables on a cluster.

Every path and URI in bratslab comes from here. The driver resolves them once, to absolute
paths and URIs (:func:`pin_settings`, called by the CLI before any command runs), and exports
them as environment variables; every process it starts (Ray tasks and actors, Train workers,
Tune trials, which run in their own working folders, and submitted jobs) inherits the same
values through Ray's ``runtime_env`` (:meth:`Settings.env`). A relative default such as
``./bratslab-work`` therefore means the folder the *user* ran the command in, never a trial's.

| variable                    | default                                              |
|-----------------------------|------------------------------------------------------|
| ``BRATSLAB_HOME``           | ``./bratslab-work``                                  |
| ``RAY_ADDRESS``             | unset: a local Ray instance on 127.0.0.1             |
| ``MLFLOW_TRACKING_URI``     | ``sqlite:///$BRATSLAB_HOME/mlflow.db``               |
| ``BRATSLAB_ARTIFACTS``      | ``$BRATSLAB_HOME/mlartifacts``                       |
| ``BRATSLAB_RAY_CPUS``       | logical CPUs for a local Ray instance                |
| ``BRATSLAB_OPTUNA_STORAGE`` | unset: ``optuna.db`` (SQLite) in each sweep's folder |
| ``BRATSLAB_STORE_CACHE``    | ``$BRATSLAB_HOME/cache/stores`` (copies of ``s3://`` stores) |
| ``BRATSLAB_RAY_STORAGE``    | ``$BRATSLAB_HOME/ray_results``, or ``s3://bucket/prefix``      |

``s3://`` stores read the standard ``AWS_*`` variables (endpoint, keys, region); processes that
open a store need the same values (:func:`store_env`). So does an ``s3://`` ``BRATSLAB_RAY_STORAGE``
on every node of the job (Ray Train's controller and workers write checkpoints there); the job's
own run files (``bratslab_run.json``, ``train_log.txt``) then stay in the driver's
``$BRATSLAB_HOME/ray_results/<name>/`` (:mod:`bratslab.train.trainer`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Resolved locations and endpoints. Build with :func:`get_settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(description="Work directory holding stores, MLflow files and results.")
    ray_address: str | None = Field(
        default=None, description="Ray cluster address; None starts/joins a local instance."
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI; None = embedded SQLite under `home`."
    )
    artifact_root: Path | None = Field(
        default=None, description="Artifact location for the embedded MLflow store."
    )
    ray_num_cpus: int | None = Field(
        default=None,
        description="Logical CPUs for a local Ray instance (trial drivers and workers each "
        "hold one, so on small machines this is set above the physical count).",
    )
    optuna_storage: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Optuna study storage shared by sweeps (e.g. "
        "`postgresql+psycopg://optuna:PW@host:5432/optuna`); None = SQLite beside each sweep.",
    )
    store_cache: Path | None = Field(
        default=None,
        description="Folder of the node-local copies of `s3://` stores; None = "
        "`home/cache/stores` (on a cluster with a shared `home`, set it to node-local disk).",
    )
    ray_storage: str | None = Field(
        default=None,
        description="Where Ray Train persists checkpoints: `s3://bucket/prefix` or a folder "
        "(absolute); None = `home/ray_results`.",
    )

    @cached_property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force (the embedded SQLite store by default)."""
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @cached_property
    def artifacts(self) -> Path:
        """Artifact root for experiments created against the embedded store."""
        return (self.artifact_root or self.home / "mlartifacts").resolve()

    def env(self) -> dict[str, str]:
        """The settings as absolute environment variables, for child processes and Ray."""
        env = {"BRATSLAB_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.artifact_root is not None:
            env["BRATSLAB_ARTIFACTS"] = str(self.artifacts)
        if self.ray_num_cpus is not None:
            env["BRATSLAB_RAY_CPUS"] = str(self.ray_num_cpus)
        if self.optuna_storage is not None:
            env["BRATSLAB_OPTUNA_STORAGE"] = self.optuna_storage
        if self.ray_storage is not None:
            env["BRATSLAB_RAY_STORAGE"] = self.ray_storage
        return env

    @cached_property
    def stores_cache(self) -> Path:
        """Where ``s3://`` stores are copied on this node (:mod:`bratslab.data.remote`)."""
        return (self.store_cache or self.home / "cache" / "stores").absolute()

    @property
    def is_embedded_tracking(self) -> bool:
        return self.mlflow_uri is None

    def path(self, *parts: str) -> Path:
        """A path under the work directory, created as a folder if it names one."""
        return self.home.joinpath(*parts)


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute against the current folder.

    ``sqlite:///mlflow.db`` and ``file:mlruns`` name files relative to whichever process opens
    them (a Tune trial runs in its own folder); the absolute form names one file for all.
    Server URIs (``http://``, ``postgresql://``, ...) and absolute paths are returned as is.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        if rel and not rel.startswith(":memory:"):
            return f"sqlite:///{Path(rel).expanduser().absolute()}"
    if "://" not in uri and not uri.startswith("file:"):  # a bare path, as MLflow allows
        return Path(uri).expanduser().absolute().as_uri()
    return uri


def _optuna_storage(url: str | None) -> str | None:
    """A relative SQLite file made absolute (trials run in their own folders); any other value
    as given (a server URL, or a mistake the sweep reports when it opens the storage)."""
    if not url:
        return None
    return absolute_uri(url) if url.startswith("sqlite:") else url


# What an ``s3://`` store's client reads (bratslab.data.remote.s3_filesystem).
OBJECT_STORE_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def store_env(settings: Settings | None = None) -> dict[str, str]:
    """The variables every process that opens an ``s3://`` store needs, those that are set:
    the ``AWS_*`` connection settings and ``BRATSLAB_STORE_CACHE`` (absolute).

    Kept apart from :meth:`Settings.env` because it carries credentials: forward it only to
    processes that read stores (Ray's runtime env shows its variables to anyone who can see
    the job).
    """
    settings = settings or get_settings()
    env = {k: os.environ[k] for k in OBJECT_STORE_VARS if os.environ.get(k)}
    if settings.store_cache is not None:
        env["BRATSLAB_STORE_CACHE"] = str(settings.store_cache)
    return env


def _ray_storage(value: str | None) -> str | None:
    """A local folder made absolute (trials run in their own folders); a ``scheme://`` URI as
    given (:mod:`bratslab.train.trainer` checks it is ``s3://`` when a job uses it)."""
    if not value:
        return None
    return value if "://" in value else str(Path(value).expanduser().absolute())


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with keyword overrides (e.g. from CLI flags).

    Relative paths and file URIs are made absolute against the current folder.
    """
    env = os.environ
    artifacts = env.get("BRATSLAB_ARTIFACTS")
    values = {
        "home": Path(env.get("BRATSLAB_HOME") or "bratslab-work").expanduser().absolute(),
        "ray_address": env.get("RAY_ADDRESS") or None,
        "mlflow_uri": absolute_uri(env["MLFLOW_TRACKING_URI"])
        if env.get("MLFLOW_TRACKING_URI")
        else None,
        "artifact_root": Path(artifacts).expanduser().absolute() if artifacts else None,
        "ray_num_cpus": int(env["BRATSLAB_RAY_CPUS"]) if env.get("BRATSLAB_RAY_CPUS") else None,
        "optuna_storage": _optuna_storage(env.get("BRATSLAB_OPTUNA_STORAGE")),
        "store_cache": Path(env["BRATSLAB_STORE_CACHE"]).expanduser().absolute()
        if env.get("BRATSLAB_STORE_CACHE")
        else None,
        "ray_storage": _ray_storage(env.get("BRATSLAB_RAY_STORAGE")),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def pin_settings(**overrides) -> Settings:
    """Resolve the settings once, in the driver, and export them as absolute variables.

    Called by the CLI before any command. Afterwards every MLflow call in this process (MLflow
    reads ``MLFLOW_TRACKING_URI``; its own default would be ``./mlflow.db``) and every process
    started from it resolves the same work folder and tracking store.
    """
    settings = get_settings(**overrides)
    os.environ.update(settings.env())
    return settings
