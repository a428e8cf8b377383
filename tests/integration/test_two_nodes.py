"""Training DDP across two Ray nodes, with the store in S3.

Two Linux network namespaces are two nodes on one machine (:mod:`netns`): node A runs Ray's
head and a SeaweedFS S3 server, node B a Ray worker node; each node has its own
``BRATSLAB_STORE_CACHE``. The test builds a tiny store straight into the bucket, then runs
``bratslab train jobs/smoke.yaml`` as a driver on node A with ``data.store=s3://...`` and
``scaling.placement_strategy=STRICT_SPREAD`` and ``data.loader=ray``: one DDP rank per node, gloo
talking over the veth pair, Ray Data's patch actors feeding the ranks, and each node syncing (and
verifying) its own copy of the store from S3. Needs root for ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from netns import BUCKET, skip_reason, two_node_cluster

pytestmark = pytest.mark.integration

BRATSLAB = Path(sys.executable).with_name("bratslab")  # the console script of this venv
JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"
URI = f"s3://{BUCKET}/stores/tiny"
EPOCHS = 2


@pytest.fixture(scope="module")
def cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(f"two-node test: {reason}")
    with two_node_cluster(cpus_per_node=2) as c:
        yield c


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """Preprocess 4 tiny synthetic cases into the bucket, then train across both nodes."""
    from bratslab.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("two-nodes")
    env = cluster.driver_env(root / "home")
    synthesize_dataset(root / "raw", 4, shape=(48, 48, 40), seed=0)
    t0 = time.monotonic()
    args = ["data", "preprocess", "raw", URI, "--no-ray", "--min-size", "32", "--folds", "2"]
    pre = cluster.run_in_a([BRATSLAB, *args], env, root, timeout=120)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    t1 = time.monotonic()
    sets = [
        f"data.store={URI}",
        f"training.epochs={EPOCHS}",
        "training.steps_per_epoch=2",
        "training.val_sw_batch_size=2",
        "scaling.num_workers=2",
        "scaling.placement_strategy=STRICT_SPREAD",
        # Patches come from Ray Data actors, which map the store's objects onto their own
        # node's copy as the workers do: each node then (1 trainer + 0.5 loader) of its 2 CPUs.
        "data.loader=ray",
        "data.loader_cpus=0.5",
    ]
    argv = [BRATSLAB, "train", JOB, *(a for s in sets for a in ("--set", s))]
    proc = cluster.run_in_a(argv, env, root, timeout=240)
    (root / "train-output.txt").write_text(proc.stdout + proc.stderr)  # kept by pytest's tmp
    print(f"preprocess to S3 {t1 - t0:.1f} s, train on two nodes {time.monotonic() - t1:.1f} s")
    return root, proc


def test_train_runs_ddp_across_both_nodes_from_an_s3_store(cluster, trained):
    root, proc = trained
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    # One Ray Train worker per node: the state API (queried inside node A) names their nodes.
    state = cluster.workers()
    ips = {n["node_id"]: n["ip"] for n in state["nodes"]}
    assert sorted(ips.values()) == sorted([cluster.a.ip, cluster.b.ip])
    node_b = next(n for n in state["nodes"] if n["ip"] == cluster.b.ip)
    assert node_b["resources"].get("node_b") == 1  # B is the worker node it was started as
    worker_ips = sorted(ips[w["node_id"]] for w in state["workers"])
    assert worker_ips == sorted([cluster.a.ip, cluster.b.ip]), state["workers"]

    # Each node synced the store from S3 into its own cache (the driver into its home's).
    for ip, cache in cluster.caches.items():
        copies = list(cache.glob(f"{BUCKET}/*/dataset.json"))
        assert len(copies) == 1, f"node {ip}: no store copy in {cache}"
        manifest = json.loads(copies[0].read_text())
        for name, entry in manifest["files"].items():
            assert (copies[0].parent / name).stat().st_size == entry["size"], (ip, name)
    assert list((root / "home" / "cache" / "stores").glob(f"{BUCKET}/*/dataset.json"))
    assert not (root / "s3:").exists()  # the URI never became a local folder


def test_two_node_run_is_tracked_and_checkpointed(cluster, trained):
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.train.checkpoint import load_train_state

    root, proc = trained
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    home = root / "home"
    run_dir = home / "ray_results" / "smoke"
    run_id = json.loads((run_dir / "bratslab_run.json").read_text())["mlflow_run_id"]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    info = run_info(run_id, uri)
    assert info["status"] == "FINISHED"
    assert info["params"]["scaling.placement_strategy"] == "STRICT_SPREAD"
    assert info["params"]["data.store"] == URI
    assert info["params"]["scaling.num_workers"] == "2"
    assert info["params"]["data.loader"] == "ray"
    # The run itself says where each rank ran: one per node.
    nodes = dict(kv.split("=") for kv in info["tags"]["bratslab.worker_nodes"].split(","))
    assert sorted(nodes) == ["0", "1"] and sorted(nodes.values()) == sorted(
        [cluster.a.ip, cluster.b.ip]
    )
    assert [s for s, _ in metric_history(run_id, "train/loss", uri)] == list(range(EPOCHS))
    assert [s for s, _ in metric_history(run_id, "val/dice_mean", uri)] == list(range(EPOCHS))

    checkpoints = sorted(p.parent for p in run_dir.glob("*/train_state.pt"))
    assert checkpoints, f"no checkpoint in {run_dir}"
    assert max(load_train_state(c)["epoch"] for c in checkpoints) == EPOCHS
    assert all((c / "model.pt").is_file() for c in checkpoints)
    assert Path(info["tags"]["bratslab.best_checkpoint"]) in checkpoints
