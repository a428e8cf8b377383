"""Where things live: embedded defaults on one machine, environment variables on a cluster.

Every path and URI in bratslab comes from here (ARCHITECTURE.md convention 9).

| variable               | default                                   |
|------------------------|-------------------------------------------|
| ``BRATSLAB_HOME``      | ``./bratslab-work``                       |
| ``RAY_ADDRESS``        | unset: a local Ray instance on 127.0.0.1  |
| ``MLFLOW_TRACKING_URI``| ``sqlite:///$BRATSLAB_HOME/mlflow.db``    |
| ``BRATSLAB_ARTIFACTS`` | ``$BRATSLAB_HOME/mlartifacts``            |
| ``BRATSLAB_RAY_CPUS``  | logical CPUs for a local Ray instance     |
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

    @property
    def is_embedded_tracking(self) -> bool:
        return self.mlflow_uri is None

    def path(self, *parts: str) -> Path:
        """A path under the work directory, created as a folder if it names one."""
        return self.home.joinpath(*parts)


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with keyword overrides (e.g. from CLI flags)."""
    env = os.environ
    values = {
        "home": Path(env.get("BRATSLAB_HOME", "bratslab-work")).expanduser().absolute(),
        "ray_address": env.get("RAY_ADDRESS") or None,
        "mlflow_uri": env.get("MLFLOW_TRACKING_URI") or None,
        "artifact_root": env.get("BRATSLAB_ARTIFACTS") or None,
        "ray_num_cpus": int(env["BRATSLAB_RAY_CPUS"]) if env.get("BRATSLAB_RAY_CPUS") else None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
