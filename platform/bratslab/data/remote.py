"""Object storage (``s3://bucket/prefix``) as a preprocessed store.

A store in a bucket has the layout of a local one (``dataset.json`` + per-case files, see
:mod:`bratslab.data.store`); its manifest lists every case file with its sha256 and size
(``"files"``). Training never reads the bucket directly: :func:`local_store` copies the store
once into a node-local cache folder and returns that folder, which the usual :class:`Store`
opens memory-mapped. The driver calls it (``DataSection.store_path``) and so does every Train
worker before it opens a case file (:func:`localize_rows`), so a worker on another node reads
its own disk. The copy is

* verified: each file is hashed while it downloads and must match the manifest's sha256 (a
  mismatch is an error naming the object and both hashes; nothing is renamed into place),
* atomic: files arrive under temp names and are renamed when verified; ``dataset.json`` is
  written last, and removed first when it changed, so a half-synced folder is never a store,
* reused: a file whose hash is known (its size and mtime are recorded in ``.bratslab-verified
  .json`` when it is verified) or whose content hashes to the manifest's is not downloaded again.
  Syncs of one cache folder take turns (a file lock), so the workers of one node download once.

The cache folder is ``$BRATSLAB_STORE_CACHE/<bucket>/<hash of the prefix>`` (default
``$BRATSLAB_HOME/cache/stores``); on a cluster whose ``BRATSLAB_HOME`` is a shared mount, point
``BRATSLAB_STORE_CACHE`` at node-local disk.

Writing (``bratslab data preprocess RAW s3://...``): each case is built in the local cache
folder and its files uploaded by the task that made them (``{id}_meta.json`` last); a case whose
remote ``{id}_meta.json`` equals the local one and whose other objects have their local sizes is
not uploaded again (the meta names the input hashes and preprocessing hash, which determine the
arrays). The driver uploads ``failures.json`` and then ``dataset.json`` last.

Connection settings come from the standard variables: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for an S3-compatible server (``http://127.0.0.1:8333``),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_REGION``
(default ``us-east-1``). The client is pyarrow's ``S3FileSystem`` (pyarrow comes with Ray Data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bratslab import atomic
from bratslab.config import ConfigError
from bratslab.settings import get_settings

log = logging.getLogger(__name__)

SCHEME = "s3://"
MANIFEST = "dataset.json"  # as bratslab.data.store.MANIFEST (not imported: store imports us)
VERIFIED = ".bratslab-verified.json"  # name → sha256, size, mtime_ns of files verified here
LOCK = ".bratslab-sync.lock"
CHUNK = 8 << 20
DOWNLOAD_THREADS = 8
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a manifest file: no folders, no ..


class StoreIntegrityError(ValueError):
    """A downloaded object does not have the sha256 (or size) its manifest records."""


def is_remote(store: str | os.PathLike) -> bool:
    """Whether ``store`` names object storage (``scheme://...``) rather than a local folder.

    Any ``scheme://`` counts, so an unsupported one (``gs://``) is refused by :func:`parse_uri`
    instead of becoming the local path ``./gs:/...``.
    """
    return isinstance(store, str) and "://" in store


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/prefix``: ``prefix`` has no leading or trailing slash (may be empty)."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, name: str) -> str:
        """pyarrow's path of the object ``name`` under the prefix (``bucket/prefix/name``)."""
        return "/".join(p for p in (self.bucket, self.prefix, name) if p)

    def child(self, name: str) -> str:
        """The ``s3://`` URI of the object ``name`` under the prefix."""
        return f"{self}/{name}"


def parse_uri(uri: str) -> S3Uri:
    """Split ``s3://bucket/prefix``.

    Raises:
        ConfigError: another scheme, a bucket name S3 would refuse, or a prefix with empty,
            ``.`` or ``..`` segments; the message names the URI.
    """
    if not uri.startswith(SCHEME):
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        raise ConfigError(f"{uri!r}: only s3:// object storage is supported, not {scheme!r}://")
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    if not _BUCKET.match(bucket):
        raise ConfigError(
            f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 characters: lower-case "
            "letters, digits, dots and hyphens)"
        )
    prefix = prefix.rstrip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{uri!r}: the key prefix has an empty, '.' or '..' segment")
    return S3Uri(bucket, prefix)


_FS_CACHE: dict[tuple, Any] = {}


def s3_filesystem(*, keys: bool = True):
    """A ``pyarrow.fs.S3FileSystem`` configured from the ``AWS_*`` variables (one per process
    and configuration).

    Args:
        keys: pass the access keys from the environment explicitly. With False the filesystem
            holds only the endpoint and region, and the AWS SDK's default chain finds the keys
            in whichever process uses it (the same ``AWS_*`` variables, ``~/.aws``, an instance
            or pod role): such an object can be pickled to other Ray processes without carrying
            a secret, which one with explicit keys would (pyarrow pickles its options).

    Raises:
        ConfigError: ``AWS_ENDPOINT_URL`` is not a ``http(s)://host:port`` URL.
    """
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    creds = tuple(env.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    token = env.get("AWS_SESSION_TOKEN")
    if not keys:
        creds, token = (None, None), None
    key = (endpoint, region, creds, token)
    if key not in _FS_CACHE:
        from pyarrow import fs  # pyarrow ships with ray[data]

        # An explicit region: otherwise the AWS SDK may ask the EC2 metadata service for one.
        kw: dict[str, Any] = {"region": region}
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"AWS_ENDPOINT_URL {endpoint!r}: expected http(s)://host:port, e.g. "
                    "http://127.0.0.1:8333"
                )
            kw.update(endpoint_override=parts.netloc, scheme=parts.scheme)
        if all(creds):
            kw.update(access_key=creds[0], secret_key=creds[1], session_token=token)
        _FS_CACHE[key] = fs.S3FileSystem(**kw)
    return _FS_CACHE[key]


def cache_dir(uri: str | S3Uri) -> Path:
    """The node-local folder that holds the copy of the store at ``uri``."""
    u = parse_uri(uri) if isinstance(uri, str) else uri
    digest = hashlib.sha256(u.prefix.encode()).hexdigest()[:16]
    return get_settings().stores_cache / u.bucket / digest


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


@dataclass
class SyncReport:
    """Outcome of :func:`sync_store`: the local folder and what was fetched or reused."""

    uri: str
    path: Path
    downloaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def read_object(fs, u: S3Uri, name: str) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    try:
        with fs.open_input_stream(u.key(name)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def remote_manifest(u: S3Uri, fs=None) -> tuple[dict, bytes]:
    """The store's ``dataset.json`` as ``(dict, raw bytes)``.

    Raises:
        FileNotFoundError: there is no ``dataset.json`` under the prefix.
        ValueError: it is not JSON, or lists no file hashes (a store written before they
            existed: rerun ``bratslab data preprocess``, which adds them without recomputing).
    """
    fs = fs or s3_filesystem()
    raw = read_object(fs, u, MANIFEST)
    if raw is None:
        raise FileNotFoundError(
            f"{u.child(MANIFEST)}: no such object (not a bratslab store; build one with "
            f"`bratslab data preprocess RAW {u}`)"
        )
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{u.child(MANIFEST)}: not valid JSON ({e})") from e
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ValueError(
            f"{u.child(MANIFEST)}: lists no file hashes (written by an older bratslab); rerun "
            f"`bratslab data preprocess RAW {u}` to add them"
        )
    for name in files:
        if not _FILE_NAME.match(name):
            raise ValueError(f"{u.child(MANIFEST)}: unsafe file name {name!r} in 'files'")
    return manifest, raw


def _load_verified(folder: Path) -> dict[str, dict]:
    try:
        return json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}


def _known(path: Path, want: dict, verified: dict[str, dict]) -> bool:
    """Whether ``path`` holds ``want``'s content: recorded as verified with its current size
    and mtime, or (not recorded) hashing to the wanted sha256."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != want["size"]:
        return False
    rec = verified.get(path.name)
    if rec and rec["sha256"] == want["sha256"] and rec["mtime_ns"] == st.st_mtime_ns:
        return rec["size"] == st.st_size
    return sha256_file(path) == want["sha256"]


def _record(path: Path, want: dict) -> dict:
    st = path.stat()
    return {"sha256": want["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _download(fs, u: S3Uri, name: str, want: dict, dest: Path) -> int:
    """Fetch one object to a temp file beside ``dest``, hashing as it arrives; rename it into
    place only if its sha256 and size are the manifest's. Returns the bytes fetched."""
    h, n = hashlib.sha256(), 0
    with atomic.atomic_open(dest) as out, fs.open_input_stream(u.key(name)) as src:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
        if h.hexdigest() != want["sha256"] or n != want["size"]:
            # Raising inside atomic_open removes the temp file: nothing reaches ``dest``.
            raise StoreIntegrityError(
                f"{u.child(name)}: sha256 {h.hexdigest()} ({n} bytes) does not match "
                f"{want['sha256']} ({want['size']} bytes) recorded in {u.child(MANIFEST)}; the "
                "object changed after the store was written (rerun `bratslab data preprocess`)"
            )
    return n


def sync_store(uri: str, cache: str | os.PathLike | None = None, fs=None) -> SyncReport:
    """Copy the store at ``uri`` into ``cache`` (default :func:`cache_dir`), verified and
    atomically (see the module docstring); files already there with the right hash stay.

    Args:
        uri: ``s3://bucket/prefix``.
        cache: the local folder (created).
        fs: a pyarrow filesystem holding the bucket (default :func:`s3_filesystem`).

    Raises:
        FileNotFoundError: no ``dataset.json`` at ``uri``, or an object it lists is missing.
        StoreIntegrityError: an object's sha256 or size differs from the manifest's.
    """
    from filelock import FileLock

    u = parse_uri(uri)
    fs = fs or s3_filesystem()
    dest = Path(cache) if cache is not None else cache_dir(u)
    dest.mkdir(parents=True, exist_ok=True)
    report = SyncReport(str(u), dest)
    with FileLock(dest / LOCK):
        manifest, raw = remote_manifest(u, fs)
        local_manifest = dest / MANIFEST
        if local_manifest.is_file() and local_manifest.read_bytes() != raw:
            local_manifest.unlink()  # the folder stops being a store until the sync completes
        atomic.remove_stale_temps(dest)
        verified = _load_verified(dest)
        files: dict[str, dict] = manifest["files"]
        missing = [n for n in sorted(files) if not _known(dest / n, files[n], verified)]
        report.reused = [n for n in sorted(files) if n not in set(missing)]

        def fetch(name: str) -> int:
            try:
                return _download(fs, u, name, files[name], dest / name)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{u.child(name)}: no such object, but {u.child(MANIFEST)} lists it"
                ) from None

        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            report.bytes_downloaded = sum(pool.map(fetch, missing))
        report.downloaded = missing
        records = {n: _record(dest / n, files[n]) for n in sorted(files)}
        if records != verified:
            atomic.write_json(dest / VERIFIED, records)
        if not local_manifest.is_file():
            atomic.write_bytes(local_manifest, raw)  # last: the copy is complete
    log.info(
        "store %s → %s: %d files downloaded (%.1f MB), %d already there",
        u,
        dest,
        len(report.downloaded),
        report.bytes_downloaded / 1e6,
        len(report.reused),
    )
    return report


def local_store(uri: str | os.PathLike) -> Path:
    """The local folder of the store ``uri``: an ``s3://`` store synced into this node's cache
    (:func:`sync_store`); a local path returned as it is."""
    if not is_remote(uri):
        return Path(uri)
    return sync_store(str(uri)).path


_SYNCED: dict[str, Path] = {}


def local_store_once(uri: str) -> Path:
    """:func:`local_store`, synced at most once per process (a Train worker's rows name the
    store on every epoch; the manifest is fetched and checked the first time)."""
    if uri not in _SYNCED:
        _SYNCED[uri] = local_store(uri)
    return _SYNCED[uri]


# --------------------------------------------------------------------------- case rows

ROW_PATHS = ("x_path", "y_path")


def rows_to_uris(rows: Sequence[dict], local_root: Path, uri: str) -> list[dict]:
    """Case rows whose paths (files under ``local_root``, the driver's copy) name the objects
    in ``uri`` instead, so a worker on any node can map them onto its own copy."""
    if not is_remote(uri):
        return list(rows)
    u = parse_uri(uri)
    out = []
    for row in rows:
        row = dict(row)
        for key in ROW_PATHS:
            if key in row:
                row[key] = u.child(Path(row[key]).relative_to(local_root).as_posix())
        out.append(row)
    return out


def localize_rows(rows: Iterable[dict]) -> list[dict]:
    """Case rows with every ``s3://`` path replaced by the file in this node's copy of its
    store (synced on first use in this process, see :func:`local_store_once`)."""
    out = []
    for row in rows:
        row = dict(row)
        for key in ROW_PATHS:
            value = row.get(key)
            if isinstance(value, str) and is_remote(value):
                store, _, name = value.rpartition("/")
                row[key] = str(local_store_once(store) / name)
        out.append(row)
    return out


# --------------------------------------------------------------------------- writing


def upload_file(fs, local: Path, u: S3Uri, name: str) -> int:
    """Upload one file (the object appears complete when the upload closes)."""
    with open(local, "rb") as src, fs.open_output_stream(u.key(name)) as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return local.stat().st_size


def upload_group(folder: Path, names: Sequence[str], uri: str, fs=None) -> int:
    """Upload ``names`` from ``folder`` in order, unless the bucket already has them: the last
    name is the group's marker (a case's ``{id}_meta.json``); when the remote marker has the
    local bytes and every other object the local size, nothing is sent. Returns the number of
    files uploaded."""
    u = parse_uri(uri)
    fs = fs or s3_filesystem()
    *data, marker = names
    if read_object(fs, u, marker) == (folder / marker).read_bytes():
        infos = fs.get_file_info([u.key(n) for n in data])
        if all(i.size == (folder / n).stat().st_size for i, n in zip(infos, data, strict=True)):
            return 0
    for name in names:
        upload_file(fs, folder / name, u, name)
    return len(names)


def upload_manifest(folder: Path, uri: str, extra: Sequence[str] = (), fs=None) -> int:
    """Upload ``extra`` files (e.g. ``failures.json``), then ``dataset.json``, last: a store
    appears in the bucket only once every file it lists is there. Returns the files sent."""
    u = parse_uri(uri)
    fs = fs or s3_filesystem()
    names = [n for n in extra if (folder / n).is_file()] + [MANIFEST]
    for name in names:
        upload_file(fs, folder / name, u, name)
    return len(names)
