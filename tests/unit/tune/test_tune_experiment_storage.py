"""Where a sweep keeps its Tune experiment, checkpoints and markers (``BRATSLAB_RAY_STORAGE``),
checked without an S3 server: the bucket side runs against SeaweedFS in
``tests/integration/test_postgres.py``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml

from bratslab.config import ConfigError
from bratslab.tune.experiment_storage import ExperimentStorage, sweep_storage_uri
from bratslab.tune.sweep_paths import SweepPaths

ROOT = Path(__file__).resolve().parents[3]
SECRET = "not-to-be-pickled-0123456789"


def test_only_an_s3_setting_moves_a_sweep_into_the_bucket():
    assert sweep_storage_uri(None, "s1") is None
    assert sweep_storage_uri("/shared/ray_results", "s1") is None  # a folder: the sweep folder
    assert sweep_storage_uri("s3://my-bucket/runs/", "s1") == "s3://my-bucket/runs/sweeps/s1"
    assert sweep_storage_uri("s3://my-bucket", "s1") == "s3://my-bucket/sweeps/s1"
    with pytest.raises(ConfigError, match="BRATSLAB_RAY_STORAGE: 'gs://b/p'"):
        sweep_storage_uri("gs://b/p", "s1")


def test_bucket_paths_are_what_ray_is_given_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    paths = SweepPaths(tmp_path, None, "s3://my-bucket/runs/sweeps/s1")
    s = paths.experiment
    assert s.remote
    assert s.tune_storage_path == "my-bucket/runs/sweeps/s1"
    assert s.tune_path("tune") == "my-bucket/runs/sweeps/s1/tune"
    assert s.train_storage == "s3://my-bucket/runs/sweeps/s1/train"
    reported = s.checkpoint_path("s1-a", "epoch0001-x")
    assert reported == "my-bucket/runs/sweeps/s1/train/s1-a/epoch0001-x"
    assert s.checkpoint_uri(reported) == "s3://my-bucket/runs/sweeps/s1/train/s1-a/epoch0001-x"
    # Ray pickles the filesystem into the trial actors: endpoint only, never the keys.
    blob = pickle.dumps(s.filesystem)
    assert SECRET.encode() not in blob and b"key-id" not in blob
    assert b"127.0.0.1:9" in blob
    # The trial context (shipped with tune.with_parameters) carries the location, no secret.
    assert SECRET.encode() not in pickle.dumps(paths)


def test_folder_storage_keeps_the_layout_of_the_sweep_folder(tmp_path):
    s = SweepPaths(tmp_path).experiment
    assert not s.remote and s.filesystem is None
    assert s.tune_storage_path == str(tmp_path.resolve())
    assert s.train_storage == tmp_path / "train"
    assert not s.has_experiment("tune")
    (tmp_path / "tune").mkdir()
    assert s.has_experiment("tune")

    assert s.read_marker("t1") is None and not s.has_marker("t1")
    s.write_marker("t1", {"trial_id": "t1", "last_result": {"epoch": 1}})
    marker = SweepPaths(tmp_path).marker("t1")  # where tests and tools look for it
    assert json.loads(marker.read_text())["last_result"] == {"epoch": 1}
    assert s.has_marker("t1")
    s.append_attempt("t1", {"job": "a"})
    s.append_attempt("t1", {"job": "b"})
    lines = SweepPaths(tmp_path).attempts("t1").read_text().splitlines()
    assert [json.loads(line)["job"] for line in lines] == ["a", "b"]

    run = tmp_path / "train" / "s-t1"
    (run / "epoch0000-a").mkdir(parents=True)
    (run / "epoch0001-b").mkdir()
    (run / "bratslab_run.json").write_text("{}")
    assert s.checkpoint_names("s-t1") == {"epoch0000-a", "epoch0001-b"}
    assert s.checkpoint_names("s-none") == set()
    assert s.trial_run_dir("s-t1") == run
    path = s.checkpoint_path("s-t1", "epoch0001-b")
    assert s.checkpoint_exists(path) and not s.checkpoint_exists(str(run / "epoch0002-c"))
    assert s.localize(path, "t1") == path  # already local: used where it is


def test_bad_ray_storage_fails_before_the_sweep_folder_exists(tmp_path, monkeypatch):
    from bratslab.jobs.spec import load_job
    from bratslab.tune.sweep import start_sweep

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setenv("BRATSLAB_RAY_STORAGE", "s3://Not_A_Bucket/p")
    job = yaml.safe_load((ROOT / "jobs/sweep_smoke.yaml").read_text())
    job["sweep"]["space"] = str(ROOT / "search_spaces/smoke.yaml")
    job["sweep"]["name"] = "s3-bad"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="BRATSLAB_RAY_STORAGE: 's3://Not_A_Bucket/p'"):
        start_sweep(load_job(tmp_path / "job.yaml"), job_source=str(tmp_path / "job.yaml"))
    assert not (tmp_path / "sweeps").exists()
    assert not (tmp_path / "m.db").exists()


def test_storage_is_a_plain_value(tmp_path):
    """Frozen and comparable: a trial context pickles it by value."""
    a = ExperimentStorage(tmp_path, "s3://b-b/p/sweeps/s")
    assert pickle.loads(pickle.dumps(a)) == a
