"""Concurrent promotions end on the best version, whatever the interleaving.

Four promoter processes (spawned, started together at a barrier) each call
``promote_if_better`` for their own version of one registered model on a real embedded
SQLite store. Before, all four compared against the old champion before any wrote, and the
last writer won even with Dice 0.60. Run with the store's file lock (the embedded path) and
without it (the compare-set-verify loop alone, as on a tracking server)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp

import pytest

pytestmark = pytest.mark.integration

DICE = (0.6, 0.8, 0.7, 0.75)  # version 2 must end as champion
ROUNDS = 2


def _promote(uri, name, version, barrier, results, locked):
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    from bratslab.tracking import promotion, registry

    if not locked:  # exercise the loop that a server store relies on
        promotion._promotion_lock = lambda uri: contextlib.nullcontext()
    registry.get_version(name, version=version)  # connect before the start line
    barrier.wait()
    try:
        moved = registry.promote_if_better(name, version, "tta/dice_mean")
        results.put((version, "ok", moved))
    except Exception as e:
        results.put((version, "error", f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("locked", [True, False], ids=["file-lock", "settle-loop"])
def test_concurrent_promoters_leave_the_best_version_champion(tmp_path, monkeypatch, locked):
    from bratslab.tracking import mlflow_runs, registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = mlflow_runs.client()
    ctx = mp.get_context("spawn")
    for round_ in range(ROUNDS):
        name = f"race-{round_}"
        c.create_registered_model(name)
        for i, dice in enumerate(DICE):
            art = tmp_path / f"{name}-v{i}"
            art.mkdir()
            c.create_model_version(name, source=art.as_uri(), tags={"tta/dice_mean": repr(dice)})
        barrier, results = ctx.Barrier(len(DICE)), ctx.Queue()
        procs = [
            ctx.Process(target=_promote, args=(uri, name, str(v), barrier, results, locked))
            for v in range(1, len(DICE) + 1)
        ]
        for p in procs:
            p.start()
        out = sorted(results.get(timeout=300) for _ in procs)
        for p in procs:
            p.join(60)
        assert [status for _, status, _ in out] == ["ok"] * len(DICE), out
        champion = registry.get_version(name, alias="champion")
        assert champion.version == "2", f"round {round_}: champion v{champion.version}, {out}"
        assert champion.metrics["tta/dice_mean"] == 0.8
        # The best one always reports that it holds the alias (an earlier one may have held
        # it for a moment, before the best arrived).
        assert dict((v, moved) for v, _, moved in out)["2"] is True, out
