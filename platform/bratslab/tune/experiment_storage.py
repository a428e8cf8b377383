"""Where a sweep's Tune experiment, trial checkpoints and trial markers live.

By default everything is in the sweep folder ``$BRATSLAB_HOME/sweeps/<name>/`` (layout in
:mod:`bratslab.tune.sweep`). With ``BRATSLAB_RAY_STORAGE=s3://bucket/prefix`` a new sweep puts
what the trials write, and what a resume needs to survive the loss of a node, in the bucket
under ``s3://bucket/prefix/sweeps/<name>/`` instead (a plain folder in ``BRATSLAB_RAY_STORAGE``
leaves a sweep as it was: all in its folder)::

    in the bucket (s3://bucket/prefix/sweeps/<name>/)
      tune/                  Ray Tune's experiment state; ``Tuner.restore`` reads it from here
      train/<sweep>-<trial>/ each trial's Ray Train checkpoints (epoch*/); a restarted trial
                             resumes from the latest one here
      trials/<id>.json       a completed trial's outcome (written by the driver, read by the
                             trial actor wherever it runs, so a replay does not train again)
      trials/<id>.attempts.jsonl   audit trail, one line per training start of the trial

    local, on the driver ($BRATSLAB_HOME/sweeps/<name>/)
      sweep.json, space.yaml  the manifest (it records the bucket location under
                             ``ray_storage``; ``--resume`` uses that, not the current setting)
      optuna.db               the Optuna study, unless BRATSLAB_OPTUNA_STORAGE names a database
      results.csv, *.png      the results table and Optuna plots (also on the MLflow parent run)
      checkpoints/<trial>/    copies of the checkpoints the sweep re-evaluates and registers

    local, on the node that ran the trial ($BRATSLAB_HOME/ray_results/<sweep>-<trial>/)
      bratslab_run.json, train_log.txt, checkpoints/   the train stage's own run files
                             (:func:`bratslab.train.run_storage.run_storage`)

The bucket is reached through :func:`bratslab.data.remote.s3_filesystem` with ``keys=False``:
Ray pickles ``RunConfig`` and the trial context into other processes, and that filesystem holds
only the endpoint and region; each process's AWS SDK finds the keys in its own environment.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bratslab import atomic
from bratslab.config import ConfigError
from bratslab.data.remote import SCHEME, is_remote, parse_uri, s3_filesystem
from bratslab.train.run_storage import run_storage

log = logging.getLogger(__name__)

SWEEPS_PREFIX = "sweeps"  # under BRATSLAB_RAY_STORAGE's prefix: sweeps/<name>/...
LOCAL_COPIES = "checkpoints"  # in the sweep folder: downloaded checkpoints (s3:// only)


def sweep_storage_uri(ray_storage: str | None, name: str) -> str | None:
    """The bucket location of a new sweep ``name``: ``s3://bucket/prefix/sweeps/<name>`` when
    ``ray_storage`` (``BRATSLAB_RAY_STORAGE``) is an ``s3://`` URI, else None (the sweep folder).

    Raises:
        ConfigError: another scheme, or a URI S3 would refuse (named as BRATSLAB_RAY_STORAGE).
    """
    if not ray_storage or not is_remote(ray_storage):
        return None
    try:
        u = parse_uri(ray_storage)
    except ConfigError as e:
        raise ConfigError(f"BRATSLAB_RAY_STORAGE: {e}") from None
    return u.child(f"{SWEEPS_PREFIX}/{name}")


@dataclass(frozen=True)
class ExperimentStorage:
    """The sweep's Tune experiment, trial checkpoints and markers: in ``root`` (the sweep
    folder) or, with ``uri`` (``s3://bucket/prefix/sweeps/<name>``), in the bucket.

    Paths handed to Ray are what Ray reports back: a local absolute path, or pyarrow's
    ``bucket/key`` on the S3 filesystem (``checkpoint_path`` of a Tune result included).
    """

    root: Path
    uri: str | None = None

    @property
    def remote(self) -> bool:
        return self.uri is not None

    @property
    def filesystem(self):
        """The keyless pyarrow ``S3FileSystem`` for ``uri``; None for the sweep folder."""
        return s3_filesystem(keys=False) if self.remote else None

    def _path(self, rel: str) -> str:
        """``rel`` under the storage: ``bucket/prefix/sweeps/<name>/rel`` or a local path."""
        if not self.remote:
            return str((self.root / rel).resolve())

        return parse_uri(self.uri).key(rel)

    # ------------------------------------------------------------------ what Ray is given

    @property
    def tune_storage_path(self) -> str:
        """``RunConfig.storage_path`` of the Tune experiment (named ``tune`` under it)."""
        return self._path("").rstrip("/")

    def tune_path(self, dirname: str) -> str:
        """The experiment folder, for ``Tuner.restore`` / ``Tuner.can_restore``."""
        return self._path(dirname)

    @property
    def train_storage(self) -> str | Path:
        """``storage_path`` of each trial's Train run (a folder, or an ``s3://`` URI)."""
        return f"{self.uri}/train" if self.remote else self.root / "train"

    def has_experiment(self, dirname: str) -> bool:
        """Whether Tune has written anything of the experiment yet."""
        if not self.remote:
            return (self.root / dirname).exists()
        from pyarrow import fs

        return self.filesystem.get_file_info(self._path(dirname)).type != fs.FileType.NotFound

    # ------------------------------------------------------------------ checkpoints

    def trial_run_dir(self, run_name: str) -> Path:
        """The train stage's local run folder of a trial (``bratslab_run.json``): beside its
        checkpoints in the sweep folder, or its ``ray_results`` folder with ``s3://``."""
        if not self.remote:
            return self.root / "train" / run_name

        return run_storage(self.train_storage).run_dir(run_name)

    def checkpoint_names(self, run_name: str) -> set[str]:
        """Names of the trial's persisted checkpoint folders (``epoch*``)."""
        if not self.remote:
            return {p.name for p in (self.root / "train" / run_name).glob("epoch*")}
        from pyarrow import fs

        sel = fs.FileSelector(self._path(f"train/{run_name}"), allow_not_found=True)
        infos = self.filesystem.get_file_info(sel)
        return {
            i.base_name
            for i in infos
            if i.type == fs.FileType.Directory and i.base_name.startswith("epoch")
        }

    def checkpoint_path(self, run_name: str, checkpoint_name: str) -> str:
        """A checkpoint as Ray reports it (``checkpoint_path``)."""
        if not self.remote:  # as Ray Train names it: run_storage's absolute folder
            return str((self.root / "train" / run_name / checkpoint_name).absolute())
        return self._path(f"train/{run_name}/{checkpoint_name}")

    def checkpoint_exists(self, path: str) -> bool:
        """Whether the reported ``path`` is still a checkpoint folder (the trainer keeps only
        its top ones)."""
        if not self.remote:
            return Path(path).is_dir()
        from pyarrow import fs

        return self.filesystem.get_file_info(path).type == fs.FileType.Directory

    def checkpoint_uri(self, path: str) -> str:
        """The reported ``path`` as a user names it: ``s3://bucket/key`` or the folder."""
        return SCHEME + path if self.remote else path

    def localize(self, checkpoint: str, trial_id: str) -> str:
        """A local folder holding ``checkpoint`` (a folder, or an ``s3://`` URI that is copied
        into ``checkpoints/<trial_id>/<name>`` of the sweep folder once)."""
        if not checkpoint.startswith(SCHEME):
            return checkpoint
        from pyarrow import fs

        src = checkpoint[len(SCHEME) :]
        dest = self.root / LOCAL_COPIES / trial_id / Path(src).name
        if not dest.is_dir():
            partial = dest.with_name(dest.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            fs.copy_files(src, str(partial), source_filesystem=self.filesystem)
            partial.rename(dest)  # a half-copied folder is never taken for a checkpoint
            log.info("copied %s to %s", checkpoint, dest)
        return str(dest)

    # ------------------------------------------------------------------ trial markers

    def marker_path(self, trial_id: str) -> str:
        return self._path(f"trials/{trial_id}.json")

    def read_marker(self, trial_id: str) -> dict[str, Any] | None:
        """A completed trial's recorded outcome, or None."""
        raw = self._read(f"trials/{trial_id}.json")
        return None if raw is None else json.loads(raw)

    def has_marker(self, trial_id: str) -> bool:
        return self.read_marker(trial_id) is not None

    def write_marker(self, trial_id: str, data: dict[str, Any]) -> None:
        """Record a completed trial (atomically: a local rename, or one S3 PUT)."""
        if not self.remote:
            atomic.write_json(self.root / "trials" / f"{trial_id}.json", data)
            return
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
        self._write(f"trials/{trial_id}.json", text.encode())

    def append_attempt(self, trial_id: str, record: dict[str, Any]) -> None:
        """Add one line to the trial's ``attempts.jsonl``. One attempt of a trial runs at a
        time, so the object's read-modify-write on S3 (which cannot append) does not race."""
        line = json.dumps(record) + "\n"
        rel = f"trials/{trial_id}.attempts.jsonl"
        if not self.remote:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(line)
            return
        self._write(rel, (self._read(rel) or b"") + line.encode())

    def _read(self, rel: str) -> bytes | None:
        if not self.remote:
            path = self.root / rel
            return path.read_bytes() if path.is_file() else None
        try:
            with self.filesystem.open_input_stream(self._path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write(self, rel: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(self._path(rel)) as f:
            f.write(data)
