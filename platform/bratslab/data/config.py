"""The data stage's configs: the training job's ``data`` section (:class:`DataSection`) here,
its ``augment`` part in :mod:`bratslab.data.augment_config`, and ``bratslab data preprocess``'s
:class:`~bratslab.data.preprocess_config.PreprocessConfig` in :mod:`bratslab.data.preprocess_config`
(both importable from here too)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from bratslab.config import ConfigError, StrictModel
from bratslab.data.augment_config import AugmentConfig
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.remote import is_remote, local_store, parse_uri
from bratslab.settings import get_settings

__all__ = ["AugmentConfig", "DataSection", "PreprocessConfig"]


class DataSection(StrictModel):
    """Which preprocessed store and fold to train on, and how patches are drawn."""

    store: str = Field(
        description="Preprocessed store folder (dataset.json inside). A relative path means "
        "the folder of that name in the current directory if it exists there, otherwise under "
        "$BRATSLAB_HOME; it is resolved once, when the job is loaded, and the log says which. "
        "Or s3://bucket/prefix: synced into a node-local cache ($BRATSLAB_STORE_CACHE, default "
        "$BRATSLAB_HOME/cache/stores) on every node that trains, each file checked against "
        "the manifest's sha256."
    )
    fold: int = Field(default=0, ge=0, description="Cross-validation fold from the store.")
    foreground_oversample: float = Field(
        default=1 / 3,
        ge=0,
        le=1,
        description="Fraction of patches centred on a tumour voxel (nnU-Net uses 1/3).",
    )
    max_val_cases: int | None = Field(
        default=None, ge=1, description="Validate on at most this many of the fold's cases."
    )
    prefetch_batches: int = Field(
        default=2,
        ge=0,
        description="Batches prepared ahead for each worker: by its loader thread (loader: "
        "thread), or fetched ahead from Ray Data (loader: ray; iter_torch_batches).",
    )
    loader: Literal["thread", "ray"] = Field(
        default="thread",
        description="Who samples and augments training patches. thread: one background "
        "thread in each Train worker (no start-up cost; enough for small patches). ray: a "
        "Ray Data pipeline (case rows -> patches on a pool of CPU actors, loader_cpus per "
        "worker) streamed to the workers through Ray Train's dataset sharding; for 128^3 "
        "patches with augmentation, where one thread cannot keep a GPU busy.",
    )
    loader_cpus: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="loader: ray only. CPUs of patch-making actors per Train worker "
        "(fractions allowed, > 0): the pool has ceil(loader_cpus * num_workers) actors "
        "sharing loader_cpus * num_workers CPUs. The cluster needs these CPUs on top of the "
        "workers' own.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-patch augmentation."
    )

    def locate_store(self) -> tuple[Path | str, str]:
        """``(the store, where it was found)``: an absolute folder and ``"as given"`` (an
        absolute path), ``"the current folder"`` or ``"$BRATSLAB_HOME"``; or, for an
        ``s3://bucket/prefix`` store, that URI (normalised, not fetched) and ``"object
        storage"``. A URI stays a URI so every node syncs its own copy (:meth:`store_path`).

        Raises:
            ConfigError: the folder is in neither place, or holds no ``dataset.json`` (the
                message names every path tried); or the URI is malformed or not ``s3://``.
        """
        if is_remote(self.store):
            return str(parse_uri(self.store)), "object storage"
        p = Path(self.store).expanduser()
        if p.is_absolute():
            candidates = [(p, "as given")]
        else:
            home = get_settings().home
            candidates = [(p.absolute(), "the current folder"), (home / p, "$BRATSLAB_HOME")]
        for path, where in candidates:
            if path.is_dir():
                if not (path / "dataset.json").is_file():
                    raise ConfigError(
                        f"data.store {self.store!r}: {path} is not a preprocessed store "
                        "(no dataset.json); build one with `bratslab data preprocess RAW STORE`"
                    )
                return path, where
        tried = " or ".join(str(path) for path, _ in candidates)
        raise ConfigError(
            f"data.store {self.store!r}: no such store (looked for {tried}); "
            "build one with `bratslab data preprocess RAW STORE`"
        )

    def store_path(self) -> Path:
        """The store folder as an absolute path (see :meth:`locate_store`). An ``s3://``
        store is first synced into this node's cache folder, verified against its manifest's
        hashes (:func:`bratslab.data.remote.local_store`), and that folder is returned.

        Raises:
            ConfigError: no local store (see :meth:`locate_store`), or no ``dataset.json``
                at the ``s3://`` URI.
        """
        located, _ = self.locate_store()
        if not is_remote(located):
            return Path(located)
        try:
            return local_store(located)
        except FileNotFoundError as e:
            raise ConfigError(f"data.store {self.store!r}: {e}") from None
