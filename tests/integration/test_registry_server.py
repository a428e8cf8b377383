"""The registry commands against a real `mlflow server` on 127.0.0.1 (SQLite backend, proxied
artifacts), and `bratslab ui` over a SQLite store.

Two versions of a tiny real model (zoo U-Net, saved with models.weights, logged with
model_store.log_model_dir as the training stage does) are registered; the CLI lists, shows,
promotes and downloads them; a worse version does not take `champion`; `models register RUN_ID`
finds a run's logged model.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow_server import free_port, mlflow_server, stop, wait_healthy
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

NAME = "bratslab-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts; the process
    environment points MLFLOW_TRACKING_URI at it for the module. Yields its folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    mp = pytest.MonkeyPatch()
    with mlflow_server(root, str(root / "artifacts")) as url:
        try:
            mp.setenv("MLFLOW_TRACKING_URI", url)
            mp.setenv("BRATSLAB_HOME", str(root / "home"))
            yield root
        finally:
            mp.undo()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from bratslab.models.config import ModelConfig
    from bratslab.models.weights import save_model_dir
    from bratslab.models.zoo import build_model

    cfg = ModelConfig(arch="unet", unet={"filters": [4, 8, 8]})
    out = tmp_path_factory.mktemp("model") / "model"
    return save_model_dir(out, build_model(cfg), cfg, {"patch_size": [16, 16, 16]})


@pytest.fixture(scope="module")
def versions(server, model_dir):
    """Two registered versions: v1 with tta/dice_mean 0.80, v2 (worse) with 0.60."""
    from bratslab.tracking import mlflow_runs, model_store, registry

    out = []
    for dice in (0.80, 0.60):
        run_id = mlflow_runs.start_run(
            experiment="registry-test",
            run_name=f"dice-{dice}",
            params={"model": {"arch": "unet"}, "training": {"lr": 0.001}},
        )
        mlflow_runs.log_metrics(run_id, {"val/dice_mean": dice - 0.05}, step=1)
        uri = model_store.log_model_dir(model_dir, run_id=run_id)
        mlflow_runs.end_run(run_id)
        version = registry.register(uri, NAME, {"tta/dice_mean": dice, "sweep": "s1"})
        out.append((version, run_id))
    return out


def _cli(*args: str):
    from bratslab.app.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_register_and_promote_only_if_better(versions):
    from bratslab.tracking import registry

    (v1, _), (v2, _) = versions
    assert (v1, v2) == ("1", "2")
    assert registry.promote_if_better(NAME, v1, "tta/dice_mean", "max") is True
    # The worse model does not take the alias, and the registry still says v1.
    assert registry.promote_if_better(NAME, v2, "tta/dice_mean", "max") is False
    assert registry.get_version(NAME, alias="champion").version == v1
    # With "lower is better" v2 wins: the comparison direction matters.
    assert registry.promote_if_better(NAME, v2, "tta/dice_mean", "min") is True
    assert registry.get_version(NAME, alias="champion").version == v2
    registry.set_alias(NAME, v1)
    with pytest.raises(registry.AliasRefusedError, match="no finite value for metric 'nope'"):
        registry.promote_if_better(NAME, v2, "nope")


def test_models_list_and_show(versions):
    (v1, run1), _ = versions
    r = _cli("models", "list")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if NAME in ln)
    assert "│ 2 " in line  # two versions
    assert "champion→v1" in line

    r = _cli("models", "show", NAME, "--alias", "champion")
    assert r.exit_code == 0, r.output
    assert f"{NAME} version {v1}" in r.output
    assert run1 in r.output  # source run
    assert "tta/dice_mean" in r.output and "0.8000" in r.output  # metric from the version tag
    assert "val/dice_mean" in r.output and "0.7500" in r.output  # metric of the source run
    assert "model.arch" in r.output  # params of the source run
    assert "mlflow-artifacts:" in r.output  # artifact URI on the server's proxied store

    r = _cli("models", "show", NAME, "--version", "2", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)[0]
    assert info["version"] == "2" and info["metrics"]["tta/dice_mean"] == 0.6
    assert info["model_id"].startswith("m-")  # the MLflow 3 logged model behind the version
    assert info["params"]["training.lr"] == "0.001"

    r = _cli("models", "show", NAME, "--version", "9")
    assert r.exit_code == 2 and "has no version 9" in r.output


def test_models_promote_cli(versions):
    from bratslab.tracking import registry

    (v1, _), (v2, _) = versions
    r = _cli("models", "promote", NAME, v2, "--alias", "champion", "--if-better", "tta/dice_mean")
    assert r.exit_code == 0, r.output
    assert f"stays on version {v1}" in r.output
    assert registry.get_version(NAME, alias="champion").version == v1

    r = _cli("models", "promote", NAME, v2, "--alias", "staging")
    assert r.exit_code == 0 and f"{NAME}@staging -> version {v2}" in r.output
    assert registry.get_version(NAME, alias="staging").version == v2


def test_models_download_fetches_a_loadable_model(versions, tmp_path):
    from bratslab.models.weights import load_model_dir

    dst = tmp_path / "champion"
    r = _cli("models", "download", f"{NAME}@champion", str(dst))
    assert r.exit_code == 0, r.output
    files = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert files == {"model.pt", "model.json", "version.json", "SHA256SUMS"}  # self-contained
    model, info = load_model_dir(dst)
    assert info["patch_size"] == [16, 16, 16]
    # A second download into the same, now non-empty folder is refused, not merged.
    r = _cli("models", "download", f"{NAME}@champion", str(dst))
    assert r.exit_code == 2 and "not an empty folder" in r.output
    r = _cli("models", "download", f"{NAME}@nosuchalias", str(tmp_path / "x"))
    assert r.exit_code == 2 and not (tmp_path / "x").exists()


def test_runs_list_and_compare(versions):
    (_, run1), (_, run2) = versions
    r = _cli("runs", "list", "--experiment", "registry-test")
    assert r.exit_code == 0, r.output
    assert run1[:8] in r.output and run2[:8] in r.output and "FINISHED" in r.output
    r = _cli("runs", "list", "--experiment", "nope")
    assert r.exit_code == 2 and "no experiment 'nope'" in r.output

    r = _cli("runs", "compare", run1, run2)
    assert r.exit_code == 0, r.output
    assert "val/dice_mean" in r.output and "0.7500" in r.output and "0.5500" in r.output
    assert "all 2 params are identical" in r.output


def test_runs_list_by_sweep(server):
    from bratslab.tracking import mlflow_runs

    parent = mlflow_runs.start_run(experiment="sweep-test", run_name="sweep-a")
    child = mlflow_runs.start_run(experiment="sweep-test", run_name="t0", parent_run_id=parent)
    other = mlflow_runs.start_run(experiment="sweep-test", run_name="lonely")
    for by in ("sweep-a", parent):
        r = _cli("runs", "list", "--sweep", by)
        assert r.exit_code == 0, r.output
        rows = "\n".join(ln for ln in r.output.splitlines() if ln.startswith("│"))
        assert child[:8] in rows and other[:8] not in rows and parent[:8] not in rows


def test_register_a_run_by_id_and_list_json(versions):
    """`models register RUN_ID` finds the run's logged model through the server's REST API."""
    from bratslab.tracking import registry

    (_, run1), _ = versions
    r = _cli("models", "register", run1, "--name", "by-run", "--alias", "champion", "--force")
    assert r.exit_code == 0, r.output  # run1 has no tta/dice_mean: only --force moves an alias
    assert "as by-run version 1" in r.stdout and "by-run@champion -> version 1" in r.stdout
    info = registry.get_version("by-run", alias="champion")
    assert info.run_id == run1 and info.model_id.startswith("m-")
    assert info.download_uri.startswith("mlflow-artifacts:")

    r = _cli("models", "list", "--json")
    assert r.exit_code == 0, r.output
    models = {m["name"]: m for m in json.loads(r.stdout)}
    assert models["by-run"]["aliases"] == {"champion": "1"}
    assert models[NAME]["num_versions"] == 2
    r = _cli("runs", "list", "--experiment", "registry-test", "--json")
    assert r.exit_code == 0, r.output
    assert run1 in {row["run_id"] for row in json.loads(r.stdout)}


def test_ui_serves_a_sqlite_store_on_loopback(server, versions, tmp_path):
    """`bratslab ui` over a SQLite store (here: the one the server above wrote, which saves
    a second schema migration): healthy, shows its runs, answers on loopback only."""
    from bratslab.tracking.ui_view import key_metrics

    (_, run1), _ = versions
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{server / 'server.db'}", BRATSLAB_HOME=str(tmp_path))
    log = tmp_path / "ui.log"
    bratslab = str(Path(sys.executable).parent / "bratslab")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [bratslab, "ui", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # The URL is printed only once the server answers: the moment the line appears, the
        # UI is there (no waiting on our side), on the runs view of the latest experiment.
        deadline = time.monotonic() + 240
        while "MLflow UI at" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        # The experiment whose newest run started last.
        page = rf"{re.escape(url)}/#/experiments/(\d+)/runs\?viewStateShareKey=([^&\s]+)"
        page += "&workflowType=machine_learning"  # MLflow's model-training mode, not GenAI
        pattern = rf"MLflow UI at {page}"
        shown = re.search(pattern, log.read_text())
        assert shown, log.read_text()
        exp_id, view = shown.groups()
        mc = MlflowClient(env["MLFLOW_TRACKING_URI"])
        ids = [e.experiment_id for e in mc.search_experiments()]
        newest = mc.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"])[0]
        assert newest.info.experiment_id == exp_id
        # Model training, not MLflow 3's GenAI view (traces, "Start Demo").
        exp = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment(exp_id)
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
        # The view the URL names is the experiment's shared-view tag, listing its Dice columns.
        columns = json.loads(exp.tags[f"mlflow.sharedViewState.{view}"])["selectedColumns"]
        logged = {k for r in mc.search_runs([exp_id]) for k in r.data.metrics}
        assert [c for c in columns if c.startswith("metrics.")] == [
            f"metrics.`{k}`" for k in key_metrics(logged)
        ]
        assert columns[:2] == ["attributes.`Source`", "attributes.`Models`"]
        wait_healthy(url, proc, log)
        r = requests.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run1}, timeout=10)
        assert r.status_code == 200 and r.json()["run"]["info"]["run_name"] == "dice-0.8"
        # Nothing answers on the machine's other addresses.
        host_ip = socket.gethostbyname(socket.gethostname())
        if not host_ip.startswith("127."):
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{host_ip}:{port}/health", timeout=2)
    finally:
        stop(proc)
    # A port that cannot be is a usage error (exit 2), not a server traceback.
    r = subprocess.run(
        [bratslab, "ui", "--port", "99999"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr, r.stderr
