"""Where a job's checkpoints and run files go (``run_storage``, ``BRATSLAB_RAY_STORAGE``).

No server: building a pyarrow ``S3FileSystem`` does not connect.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.settings import get_settings
from bratslab.train.run_storage import run_storage

SECRET = "not-a-real-secret-4711"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BRATSLAB_RAY_STORAGE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bratslab-unit-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    return monkeypatch, tmp_path


def test_default_is_one_local_folder_for_ray_and_run_files(env):
    _, tmp = env
    st = run_storage()
    assert not st.remote and st.filesystem is None
    assert st.ray_path == str(tmp / "home" / "ray_results")
    assert st.run_dir("job") == tmp / "home" / "ray_results" / "job"
    assert st.uri("/x/checkpoint_1") == "/x/checkpoint_1"


def test_local_setting_is_absolute_and_holds_both(env):
    monkeypatch, tmp = env
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("BRATSLAB_RAY_STORAGE", "shared/results")
    assert get_settings().env()["BRATSLAB_RAY_STORAGE"] == str(tmp / "shared" / "results")
    st = run_storage()
    assert st.ray_path == str(tmp / "shared" / "results")
    assert st.run_dir("job") == tmp / "shared" / "results" / "job"
    # An explicit argument (a sweep's trial folder) wins over the setting.
    assert run_storage(tmp / "trials").run_dir("t1") == tmp / "trials" / "t1"


def test_s3_setting_puts_checkpoints_in_the_bucket_and_run_files_at_home(env):
    monkeypatch, tmp = env
    monkeypatch.setenv("BRATSLAB_RAY_STORAGE", "s3://my-bucket/team/ray_results/")
    assert get_settings().env()["BRATSLAB_RAY_STORAGE"] == "s3://my-bucket/team/ray_results/"
    st = run_storage()
    assert st.remote and st.ray_path == "my-bucket/team/ray_results"
    assert st.filesystem.type_name == "s3" and st.filesystem.region == "eu-west-1"
    assert st.run_dir("job") == tmp / "home" / "ray_results" / "job"
    assert st.uri("my-bucket/team/ray_results/job/c1") == "s3://my-bucket/team/ray_results/job/c1"
    # Ray pickles the filesystem into the controller and workers: no key travels with it.
    blob = pickle.dumps(st.filesystem)
    assert SECRET.encode() not in blob and b"bratslab-unit-key" not in blob
    assert b"127.0.0.1:8333" in blob  # the endpoint does


def test_bad_storage_uri_is_a_config_error_naming_the_setting(env):
    monkeypatch, _ = env
    monkeypatch.setenv("BRATSLAB_RAY_STORAGE", "gs://bucket/x")
    with pytest.raises(ConfigError, match=r"BRATSLAB_RAY_STORAGE: 'gs://bucket/x'.*s3://"):
        run_storage()
    with pytest.raises(ConfigError, match=r"storage_path: 's3://B_AD/x'.*bucket name"):
        run_storage("s3://B_AD/x")


def test_explicit_keys_filesystem_differs_from_keyless_one(env):
    """The store helper still passes keys by default (stores are read in-process)."""
    from bratslab.data.remote import s3_filesystem

    assert SECRET.encode() in pickle.dumps(s3_filesystem())
    assert SECRET.encode() not in pickle.dumps(s3_filesystem(keys=False))
    assert Path(run_storage().local_root).name == "ray_results"
