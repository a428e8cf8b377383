"""``data.loader: ray`` end to end: the smoke job trains on patches made by a Ray Data actor
pool and streamed to 2 Train workers through Ray Train's dataset sharding (real local Ray,
MLflow on SQLite).

Run with ``data.augment.on: device`` (the actors only sample; each worker augments its batch).
The same Ray Data loader with ``on: loader`` (the default) runs in ``test_two_nodes.py``, across
two Ray nodes, so it is not trained a second time here (a Ray Data start-up costs minutes on 2
cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

JOB = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"


@pytest.mark.parametrize("augment_on", ["device"])
def test_smoke_epoch_trains_from_the_ray_patch_stream(ray_cluster, tiny_store, augment_on):
    # on: device — the actors only sample (with the affine margin) and each worker augments
    # its batch in torch (issue 28).
    from bratslab.jobs.spec import load_job
    from bratslab.tracking.mlflow_runs import metric_history, run_info
    from bratslab.train.trainer import run_training

    spec = load_job(
        JOB,
        [
            f"name=it-loader-ray-{augment_on}",
            f"data.store={tiny_store}",
            "data.loader=ray",
            "data.loader_cpus=0.5",  # 2 workers x 0.5: one actor holding one CPU
            f"data.augment.on={augment_on}",
            "training.epochs=1",
            "training.steps_per_epoch=3",
            "training.val_sw_batch_size=2",
            "data.max_val_cases=1",
            "scaling.max_failures=0",
            "tracking.log_model=false",
        ],
    )
    out = run_training(spec, progress=False)
    info = run_info(out.run_id)
    assert info["status"] == "FINISHED"
    assert info["params"]["data.loader"] == "ray"
    assert info["params"]["data.augment.on"] == augment_on
    wait = metric_history(out.run_id, "time/data_wait_frac")
    assert [s for s, _ in wait] == [0] and 0.0 <= wait[0][1] <= 1.0
    loss = metric_history(out.run_id, "train/loss")
    assert len(loss) == 1 and loss[0][1] > 0
    assert out.metrics["throughput/samples_per_s"] > 0
