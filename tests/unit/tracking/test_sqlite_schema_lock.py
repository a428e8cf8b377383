"""Processes that open a brand-new embedded ``mlflow.db`` at the same moment all succeed: the
schema is created and migrated once, under a file lock (MLflow's own migration has none)."""

from __future__ import annotations

import multiprocessing as mp

N = 4


def _create_run(uri: str, barrier, results, i: int) -> None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    from bratslab.tracking import mlflow_runs

    barrier.wait()  # all at once, on a database that does not exist yet
    try:
        run_id = mlflow_runs.start_run(experiment="race", run_name=f"p{i}", uri=uri)
        mlflow_runs.log_metrics(run_id, {"x": float(i)}, step=0, uri=uri)
        results.put((i, "ok", run_id))
    except Exception as e:
        results.put((i, "error", f"{type(e).__name__}: {e}"))


def _race(tmp_path):
    ctx = mp.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    barrier, results = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_create_run, args=(uri, barrier, results, i)) for i in range(N)]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    return uri, out


def test_four_processes_create_runs_in_a_fresh_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    uri, out = _race(tmp_path)
    assert [status for _, status, _ in out] == ["ok"] * N, out
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("race").experiment_id]
    )
    assert len(runs) == N
