"""Where a job's files go: Ray Train's checkpoints and bratslab's own run files.

Ray Train persists checkpoints under ``BRATSLAB_RAY_STORAGE`` (default
``$BRATSLAB_HOME/ray_results``); the job's own files (``bratslab_run.json``, ``train_log.txt``)
are in the driver's ``$BRATSLAB_HOME/ray_results/<name>/`` (see :mod:`bratslab.train.trainer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bratslab.config import ConfigError
from bratslab.data.remote import SCHEME, is_remote, parse_uri, s3_filesystem
from bratslab.settings import get_settings

RUN_STATE = "bratslab_run.json"  # beside Ray's files: which MLflow run this job writes to


@dataclass(frozen=True)
class RunStorage:
    """Where a job's files go: Ray Train's checkpoints (``ray_path`` on ``filesystem``, the
    ``RunConfig`` storage) and bratslab's own run files (``local_root/<name>/``)."""

    ray_path: str
    local_root: Path
    filesystem: Any = None  # a pyarrow S3FileSystem for s3:// storage; None: a local folder

    @property
    def remote(self) -> bool:
        return self.filesystem is not None

    def run_dir(self, name: str) -> Path:
        return self.local_root / name

    def uri(self, fs_path: str) -> str:
        """A path on the storage filesystem as a user names it: ``s3://bucket/key`` or a path."""
        return SCHEME + fs_path if self.remote else fs_path


def run_storage(storage_path: str | Path | None = None) -> RunStorage:
    """Resolve the storage of a job: ``storage_path`` if given, else ``BRATSLAB_RAY_STORAGE``,
    else ``$BRATSLAB_HOME/ray_results``; a folder holds both Ray's and bratslab's files.

    An ``s3://bucket/prefix`` becomes ``RunConfig(storage_path="bucket/prefix",
    storage_filesystem=...)``. Ray pickles the ``RunConfig`` into the Train controller and
    every worker (and its checkpoints carry the filesystem back), and pyarrow pickles an
    ``S3FileSystem``'s options, access keys included. So the filesystem is built without keys
    (:func:`bratslab.data.remote.s3_filesystem` with ``keys=False``: endpoint and region only)
    and each process's AWS SDK finds them in its own environment, as it does for ``s3://``
    stores. Ray 2.60 would also accept the URI form (``s3://b/p?endpoint_override=...``, parsed
    by ``pyarrow.fs.FileSystem.from_uri`` in each process), equally free of secrets; the helper
    keeps one place that reads and checks the ``AWS_*`` endpoint and region (and a region given
    explicitly spares the SDK a lookup).

    Raises:
        ConfigError: a URI with another scheme, or a bucket name S3 would refuse.
    """
    settings = get_settings()
    local_default = settings.home / "ray_results"
    target = str(storage_path) if storage_path is not None else settings.ray_storage
    if not target:
        return RunStorage(str(local_default), local_default)
    if not is_remote(target):
        folder = Path(target).expanduser().absolute()
        return RunStorage(str(folder), folder)
    try:
        u = parse_uri(target)
    except ConfigError as e:
        where = "storage_path" if storage_path is not None else "BRATSLAB_RAY_STORAGE"
        raise ConfigError(f"{where}: {e}") from None
    return RunStorage(u.key(""), local_default, s3_filesystem(keys=False))
