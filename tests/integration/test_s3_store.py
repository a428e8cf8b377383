"""An ``s3://`` store end to end against a real S3-compatible server (SeaweedFS, s3_fixture).

``bratslab data preprocess raw/ s3://...`` builds and uploads a store; :func:`sync_store` copies
it into a node-local cache (verified; a second sync downloads nothing; a tampered object is
refused). Commands run as subprocesses with only the ``AWS_*`` variables pointing them at the
server. Training from an ``s3://`` store (two nodes, each syncing its own copy, Ray Data's patch
actors included) is ``test_two_nodes.py``; checkpoints in S3 are ``test_s3_checkpoints.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_fixture import s3_server  # noqa: F401  (the session's S3 server fixture)

pytestmark = pytest.mark.integration

BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
PREFIX = "stores/tiny"


def _env(server, home: Path, cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRATSLAB_"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    env.update(server.env(), BRATSLAB_HOME=str(home))
    if cache is not None:
        env["BRATSLAB_STORE_CACHE"] = str(cache)
    return env


def _run(args, env, cwd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BRATSLAB), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def uploaded(s3_server, tmp_path_factory):  # noqa: F811
    """4 synthetic cases preprocessed straight into s3://bratslab-test/stores/tiny."""
    from bratslab.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("s3-store")
    synthesize_dataset(root / "raw", 4, shape=(48, 48, 40), seed=0)
    uri = f"s3://{s3_server.bucket}/{PREFIX}"
    args = ["data", "preprocess", "raw", uri, "--no-ray", "--min-size", "32", "--folds", "2"]
    proc = _run(args, _env(s3_server, root / "home"), root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return uri, root, proc


def _objects(server) -> dict[str, object]:
    from pyarrow import fs

    sel = fs.FileSelector(f"{server.bucket}/{PREFIX}", recursive=True)
    return {i.base_name: i for i in server.filesystem().get_file_info(sel)}


def test_preprocess_uploads_store_with_manifest_last(s3_server, uploaded):  # noqa: F811
    uri, root, proc = uploaded
    assert f"files uploaded to {uri}" in proc.stdout
    assert not (root / "s3:").exists()  # the URI never became a local folder
    objects = _objects(s3_server)
    with s3_server.filesystem().open_input_stream(f"{s3_server.bucket}/{PREFIX}/dataset.json") as f:
        manifest = json.loads(f.read())
    files = manifest["files"]
    assert len(manifest["cases"]) == 4 and len(files) == 16  # x, y, meta.npy, meta.json each
    for name, entry in files.items():
        assert objects[name].size == entry["size"]
    assert "failures.json" in objects
    # dataset.json was uploaded after every file it lists.
    last_file = max(objects[n].mtime for n in files)
    assert objects["dataset.json"].mtime >= last_file

    # A rerun finds every case in the bucket and uploads only failures.json + dataset.json.
    args = ["data", "preprocess", "raw", uri + "/", "--no-ray", "--min-size", "32", "--folds", "2"]
    again = _run(args, _env(s3_server, root / "home"), root)
    assert again.returncode == 0, again.stderr
    assert "4 unchanged" in again.stdout and "2 files uploaded" in again.stdout


def test_sync_verifies_reuses_and_refuses_tampered_objects(
    s3_server,  # noqa: F811
    uploaded,
    tmp_path,
    monkeypatch,
):
    from bratslab.data.remote import StoreIntegrityError, sync_store
    from bratslab.data.store import Store

    uri, _, _ = uploaded
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    first = sync_store(uri, tmp_path / "cache")
    assert len(first.downloaded) == 16 and first.reused == []
    store = Store(first.path)
    assert len(store) == 4 and store.load_x(store.case_ids()[0]).shape[0] == 5
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}

    second = sync_store(uri, tmp_path / "cache")
    assert second.downloaded == [] and second.bytes_downloaded == 0 and len(second.reused) == 16
    assert {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()} == mtimes

    # Overwrite one array in the bucket: a fresh cache refuses it, naming it and both hashes.
    victim = sorted(n for n in store.manifest["files"] if n.endswith("_x.npy"))[0]
    want = store.manifest["files"][victim]["sha256"]
    key = f"{s3_server.bucket}/{PREFIX}/{victim}"
    with s3_server.filesystem().open_input_stream(key) as f:
        data = bytearray(f.read())
    data[-1] ^= 0xFF
    with s3_server.filesystem().open_output_stream(key) as f:
        f.write(bytes(data))
    with pytest.raises(StoreIntegrityError) as err:
        sync_store(uri, tmp_path / "fresh")
    msg = str(err.value)
    assert victim in msg and want in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
    assert not (tmp_path / "fresh" / victim).exists()
    assert not (tmp_path / "fresh" / "dataset.json").exists()
    # The verified copy is untouched by the change in the bucket.
    assert sync_store(uri, tmp_path / "cache").downloaded == []
    data[-1] ^= 0xFF  # restore the object for the other tests of this module
    with s3_server.filesystem().open_output_stream(key) as f:
        f.write(bytes(data))
