"""``BRATSLAB_OPTUNA_STORAGE``: which storage a sweep's Optuna study uses, checked without a
database server (a second SQLite file stands in for the shared database)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pytest

from bratslab.config import ConfigError
from bratslab.settings import get_settings
from bratslab.tune.optuna_storage import describe, open_storage, storage_for_resume
from bratslab.tune.search import make_searcher
from bratslab.tune.sweep_paths import SweepPaths

ROOT = Path(__file__).resolve().parents[3]
SECRET_URL = "postgresql+psycopg://optuna:s3cret@db.example:5432/optuna"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.delenv("BRATSLAB_OPTUNA_STORAGE", raising=False)
    return tmp_path


def test_setting_is_read_made_absolute_and_forwarded(home, monkeypatch):
    settings = get_settings()
    assert settings.optuna_storage is None
    assert "BRATSLAB_OPTUNA_STORAGE" not in settings.env()
    monkeypatch.chdir(home)
    monkeypatch.setenv("BRATSLAB_OPTUNA_STORAGE", "sqlite:///studies.db")
    assert get_settings().optuna_storage == f"sqlite:///{home / 'studies.db'}"
    monkeypatch.setenv("BRATSLAB_OPTUNA_STORAGE", SECRET_URL)
    settings = get_settings()
    assert settings.optuna_storage == SECRET_URL  # a server URL is passed on untouched
    # Ray's runtime env (ensure_ray) and submitted jobs get it, so trials see the same storage.
    assert settings.env()["BRATSLAB_OPTUNA_STORAGE"] == SECRET_URL


def test_default_is_sqlite_beside_the_sweep_and_a_setting_replaces_it(tmp_path):
    assert SweepPaths(tmp_path).optuna_url == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"
    assert SweepPaths(tmp_path, SECRET_URL).optuna_url == SECRET_URL


def test_searcher_keeps_its_study_in_the_configured_storage(tmp_path):
    from bratslab.jobs.spec import load_job
    from bratslab.tune.space import SearchSpace

    spec = load_job(ROOT / "jobs/demo.yaml")  # has initial points: the study is created at once
    space = SearchSpace.from_file(ROOT / spec.sweep.space)
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    paths = SweepPaths(tmp_path / "sweep", shared)
    make_searcher(spec.sweep, space, paths, "my-sweep")
    assert optuna.study.get_all_study_names(shared) == ["my-sweep"]
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def test_new_sweep_refuses_a_study_name_the_shared_storage_holds(home, monkeypatch):
    from bratslab.jobs.spec import load_job
    from bratslab.tune.sweep import start_sweep

    shared = f"sqlite:///{home / 'shared.db'}"
    optuna.create_study(study_name="taken", storage=shared)
    monkeypatch.setenv("BRATSLAB_OPTUNA_STORAGE", shared)
    spec = load_job(ROOT / "jobs/sweep_smoke.yaml", ["sweep.name=taken"])
    with pytest.raises(ConfigError, match="study named 'taken' already exists in sqlite:///"):
        start_sweep(spec, job_source=str(ROOT / "jobs/sweep_smoke.yaml"))
    # refused before anything was created: no sweep folder, no MLflow run
    assert not (home / "sweeps" / "taken").exists()
    assert not (home / "m.db").exists()


def _manifest(storage: str | None) -> dict:
    return {"optuna": {"storage": describe(storage), "study": "s"}}


def test_resume_reattaches_to_the_recorded_storage(home, monkeypatch):
    monkeypatch.setenv("BRATSLAB_OPTUNA_STORAGE", SECRET_URL)
    recorded = _manifest(SECRET_URL)
    assert "s3cret" not in json.dumps(recorded)  # the manifest never holds the password
    assert storage_for_resume(recorded, get_settings(), "sweep.json") == SECRET_URL
    # a sweep that keeps its study beside it (or predates the setting) stays there
    assert storage_for_resume(_manifest(None), get_settings(), "sweep.json") is None
    assert storage_for_resume({}, get_settings(), "sweep.json") is None
    other = SECRET_URL.replace("db.example", "elsewhere")
    monkeypatch.setenv("BRATSLAB_OPTUNA_STORAGE", other)
    with pytest.raises(ConfigError, match=r"sweep.json: .* is in postgresql\+psycopg://optuna:\*"):
        storage_for_resume(recorded, get_settings(), "sweep.json")
    monkeypatch.delenv("BRATSLAB_OPTUNA_STORAGE")
    with pytest.raises(ConfigError, match=r"set BRATSLAB_OPTUNA_STORAGE .* \(it is unset\)"):
        storage_for_resume(recorded, get_settings(), "sweep.json")


def test_resume_with_another_storage_fails_before_any_run(home, monkeypatch):
    from bratslab.jobs.spec import JobSpec, load_job
    from bratslab.tune.sweep import resume_sweep

    root = home / "sweeps" / "s"
    root.mkdir(parents=True)
    (root / "space.yaml").write_text((ROOT / "search_spaces/smoke.yaml").read_text())
    job = load_job(ROOT / "jobs/sweep_smoke.yaml", ["sweep.name=s"]).resolved()
    manifest = {"format": "bratslab-sweep/1", "name": "s", "job": job, "parent_run_id": None}
    manifest.update(space_file=str(root / "space.yaml"), **_manifest(SECRET_URL))
    (root / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="Optuna study is in .*db.example"):
        resume_sweep("s", job_type=JobSpec)
    assert not (home / "m.db").exists()


def test_unusable_storage_is_named_without_its_password(monkeypatch):
    with pytest.raises(ConfigError, match="not a usable SQLAlchemy URL") as err:
        open_storage("optuna.db")  # a bare path, not a URL
    assert "BRATSLAB_OPTUNA_STORAGE=optuna.db" in str(err.value)
    pytest.importorskip("psycopg", reason="needs the bratslab[postgres] extra")
    # nothing listens on port 1: the error names the URL, hides the password
    with pytest.raises(ConfigError, match="cannot open the database") as err:
        open_storage("postgresql+psycopg://optuna:s3cret@127.0.0.1:1/optuna")
    assert "optuna:***@127.0.0.1:1/optuna" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_storage_whose_driver_is_missing_points_at_the_extra():
    # pg8000 is a PostgreSQL driver SQLAlchemy knows and bratslab does not install
    pytest.importorskip("sqlalchemy.dialects.postgresql.pg8000")
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed here")
    with pytest.raises(ConfigError, match=r"not installed .*`bratslab\[postgres\]`") as err:
        open_storage("postgresql+pg8000://optuna:s3cret@127.0.0.1:1/optuna")
    assert "s3cret" not in str(err.value)
