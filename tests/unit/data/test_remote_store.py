"""``s3://`` stores without a server: URI parsing, the manifest's file hashes, the verified
sync (against a pyarrow filesystem over a local folder laid out as ``bucket/prefix/...``), the
rows workers receive, and the job spec keeping the URI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.data.config import DataSection
from bratslab.data.loader import case_rows
from bratslab.data.preprocess_config import PreprocessConfig
from bratslab.data.preprocess_tasks import run_preprocess
from bratslab.data.remote import (
    StoreIntegrityError,
    cache_dir,
    is_remote,
    localize_rows,
    parse_uri,
    rows_to_uris,
    sync_store,
)
from bratslab.data.store import Store

CFG = PreprocessConfig(min_size=[0, 0, 0], num_folds=2)
URI = "s3://bucket-a/stores/tiny"


@pytest.fixture
def store(cases, tmp_path) -> Path:
    for i in range(3):
        cases.write(f"BraTS-GLI-{i:05d}-000", seed=i)
    out = tmp_path / "store"
    assert run_preprocess(cases.root, out, CFG, use_ray=False, progress=False).exit_code == 0
    return out


@pytest.fixture
def bucket(store, tmp_path):
    """``(filesystem, root)``: the store uploaded under ``bucket-a/stores/tiny`` in ``root``."""
    from pyarrow import fs

    root = tmp_path / "s3root"
    shutil.copytree(store, root / "bucket-a" / "stores" / "tiny")
    return fs.SubTreeFileSystem(str(root), fs.LocalFileSystem()), root


def test_uris_are_parsed_never_local_paths():
    assert is_remote("s3://b/x") and is_remote("gs://b/x") and not is_remote("store")
    assert not is_remote(Path("s3:/b/x"))
    u = parse_uri("s3://my-bucket/a/b/")
    assert (u.bucket, u.prefix, str(u)) == ("my-bucket", "a/b", "s3://my-bucket/a/b")
    assert u.key("dataset.json") == "my-bucket/a/b/dataset.json"
    assert str(parse_uri("s3://my-bucket")) == "s3://my-bucket"
    for bad, why in [
        ("gs://b/x", "only s3://"),
        ("s3://Bad_Bucket/x", "not a valid bucket"),
        ("s3:///x", "not a valid bucket"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/a/../b", "'..'"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_uri(bad)


def test_cache_dir_follows_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BRATSLAB_STORE_CACHE", raising=False)
    a = cache_dir("s3://bucket-a/x")
    assert a.parent == tmp_path / "home" / "cache" / "stores" / "bucket-a"
    assert cache_dir("s3://bucket-a/y") != a
    monkeypatch.setenv("BRATSLAB_STORE_CACHE", str(tmp_path / "local"))
    assert cache_dir("s3://bucket-a/x").parent == tmp_path / "local" / "bucket-a"


def test_store_env_forwards_only_what_is_set(tmp_path, monkeypatch):
    from bratslab.settings import OBJECT_STORE_VARS, store_env

    for k in (*OBJECT_STORE_VARS, "BRATSLAB_STORE_CACHE"):
        monkeypatch.delenv(k, raising=False)
    assert store_env() == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BRATSLAB_STORE_CACHE", "rel")
    monkeypatch.chdir(tmp_path)
    assert store_env() == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "BRATSLAB_STORE_CACHE": str(tmp_path / "rel"),
    }


def test_manifest_lists_every_case_file_with_its_sha256(store):
    files = Store(store).manifest["files"]
    on_disk = sorted(p.name for p in store.glob("BraTS-*"))
    assert sorted(files) == on_disk and len(on_disk) == 12
    for name, entry in files.items():
        data = (store / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_sync_copies_verifies_and_reuses(bucket, tmp_path):
    fs, _ = bucket
    first = sync_store(URI, tmp_path / "cache", fs=fs)
    assert len(first.downloaded) == 12 and first.reused == []
    s = Store(first.path)
    assert len(s) == 3 and s.load_y(s.case_ids()[0]).shape[0] == 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    again = sync_store(URI, tmp_path / "cache", fs=fs)
    assert again.downloaded == [] and len(again.reused) == 12
    assert {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()} == mtimes

    # A damaged local file is fetched again; the others stay.
    victim = first.path / sorted(s.manifest["files"])[0]
    victim.write_bytes(b"garbage")
    repaired = sync_store(URI, tmp_path / "cache", fs=fs)
    assert repaired.downloaded == [victim.name]
    assert (
        hashlib.sha256(victim.read_bytes()).hexdigest()
        == s.manifest["files"][victim.name]["sha256"]
    )


def test_tampered_object_is_refused_naming_file_and_hashes(bucket, store, tmp_path):
    fs, root = bucket
    name = next(n for n in sorted(Store(store).manifest["files"]) if n.endswith("_x.npy"))
    obj = root / "bucket-a" / "stores" / "tiny" / name
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    obj.write_bytes(bytes(data))
    want = Store(store).manifest["files"][name]["sha256"]
    with pytest.raises(StoreIntegrityError) as err:
        sync_store(URI, tmp_path / "cache", fs=fs)
    msg = str(err.value)
    assert f"{URI}/{name}" in msg and want in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    assert not (tmp_path / "cache" / name).exists()
    assert not (tmp_path / "cache" / "dataset.json").exists()  # not a store: sync incomplete
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_missing_object_and_old_manifest_are_clear_errors(bucket, tmp_path):
    fs, root = bucket
    prefix = root / "bucket-a" / "stores" / "tiny"
    name = sorted(p.name for p in prefix.glob("*_meta.npy"))[0]
    (prefix / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{name}: no such object, but .*lists it"):
        sync_store(URI, tmp_path / "c1", fs=fs)
    manifest = json.loads((prefix / "dataset.json").read_text())
    del manifest["files"]
    (prefix / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lists no file hashes"):
        sync_store(URI, tmp_path / "c2", fs=fs)
    with pytest.raises(FileNotFoundError, match="dataset.json: no such object"):
        sync_store("s3://bucket-a/elsewhere", tmp_path / "c3", fs=fs)


def test_rows_name_objects_and_workers_map_them_to_their_copy(store, monkeypatch):
    import bratslab.data.remote as remote

    rows = case_rows(Store(store), 0, "train")
    uris = rows_to_uris(rows, store, URI)
    assert all(r["x_path"].startswith(URI + "/") and r["x_path"].endswith("_x.npy") for r in uris)
    assert rows_to_uris(rows, store, str(store)) == rows  # a local store: unchanged
    # A worker's first use syncs the store (here: its copy is ``store`` itself).
    monkeypatch.setattr(remote, "_SYNCED", {URI: store})
    assert localize_rows(uris) == rows
    assert localize_rows(rows) == rows


def test_job_spec_keeps_the_uri(tmp_path, monkeypatch):
    from bratslab.jobs.spec import load_job

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    job = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"
    spec = load_job(job, [f"data.store={URI}/"])
    assert spec.data.store == URI  # normalised, not turned into ./s3:/...
    assert DataSection(store=URI).locate_store() == (URI, "object storage")
    with pytest.raises(ConfigError, match="only s3://"):
        DataSection(store="gs://b/x").locate_store()
