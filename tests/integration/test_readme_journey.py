"""The README's "Using it" block, run literally, as a newcomer meets it.

Every command of that block runs as a ``bratslab`` subprocess, in order, in a fresh temporary
folder that holds only copies of ``jobs/`` and ``search_spaces/`` (as a clone would), with no
``BRATSLAB_*``, ``MLFLOW_*`` or ``RAY_*`` variable set: the work folder is the relative default
``./bratslab-work``. The only changes to the README's text are the sizes in :data:`SMALLER`, so
the journey fits in a few minutes on 2 cores; when the README changes, this test follows it.

It covers the four failures a newcomer hit on a fresh clone: Tune trials writing MLflow runs to
per-trial stores (every ``mlflow.db`` must be the one in ``./bratslab-work``), ``predict`` of a
``models:/`` URI missing the embedded store, and ``train`` not finding ``./store``.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# README text -> what the test runs instead: sizes only, never the command's meaning.
SMALLER = {
    "--cases 12": "--cases 5",  # 5 folds of 1 case: evaluate-model scores fold 0's 1 case
    "--shape 96 96 64": "--shape 48 48 40",
    "training.epochs=5": (
        "training.epochs=1 --set training.steps_per_epoch=2 --set data.max_val_cases=1"
    ),
    "bratslab sweep jobs/sweep_smoke.yaml": (
        "bratslab sweep jobs/sweep_smoke.yaml --set sweep.num_trials=2 --set training.epochs=1"
        " --set sweep.top_k=1 --set training.steps_per_epoch=2 --set data.max_val_cases=1"
    ),
}


def readme_block(title: str) -> list[str]:
    """The commands of the first ```bash block under the README heading ``title``, with
    trailing ``# comments`` removed."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def smaller(command: str) -> str:
    for old, new in SMALLER.items():
        command = command.replace(old, new)
    return command


def clean_env() -> dict[str, str]:
    """The environment of a user who set nothing: no bratslab, MLflow or Ray variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRATSLAB_", "MLFLOW_", "RAY_", "PYTEST_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "2"
    return env


# What Ray, MLflow and Optuna say, never on the console of a run command (bratslab.console).
NOT_ON_CONSOLE = (
    "pid=", "TrainingReport", "State API", "\x1b[", "tensorboard", "Successfully registered",
    "Created version", "A new study created", "Using an existing study", "Downloading artifacts",
    "UserWarning", "Token authentication", "core_worker.cc", "View run",
)  # fmt: skip


def assert_console_is_bratslab(out: str, max_lines: int, what: str) -> None:
    """A run command's console: at most ``max_lines`` lines, none of Ray's or the libraries'."""
    lines = out.splitlines()
    assert len(lines) <= max_lines, f"{what}: {len(lines)} lines > {max_lines}:\n{out}"
    for bad in NOT_ON_CONSOLE:
        assert bad not in out, f"{what} printed {bad!r}:\n{out}"


def test_readme_using_it_block_runs_as_written(tmp_path):
    commands = readme_block("Using it")
    verbs = [" ".join(shlex.split(c)[1:3]) for c in commands]
    # The journey the README promises, in this order.
    journey = (
        "data synth", "data validate", "data preprocess", "data fingerprint",
        "train jobs/smoke.yaml", "sweep jobs/sweep_smoke.yaml", "predict --model",
        "evaluate --pred", "evaluate-model --model", "export rle", "models list",
    )  # fmt: skip
    for want in journey:
        assert any(v.startswith(want) for v in verbs), f"README 'Using it' lacks {want!r}"

    for sub in ("jobs", "search_spaces"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    env = clean_env()
    outputs = {}
    for command in commands:
        argv = shlex.split(smaller(command))
        assert argv[0] == "bratslab", command
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{out[-4000:]}"
        outputs[" ".join(argv[1:3])] = out

    work = tmp_path / "bratslab-work"
    # Preprocessing on Ray: its progress and summary, none of Ray's own lines (token-auth
    # warning, worker output); those are in $BRATSLAB_HOME/logs.
    for bad in NOT_ON_CONSOLE:
        assert bad not in outputs["data preprocess"], outputs["data preprocess"]
    assert "cases" in outputs["data preprocess"]
    # Run commands print a header, one line per epoch and a summary; the rest is in a log file.
    train_out = outputs["train jobs/smoke.yaml"]
    assert_console_is_bratslab(train_out, 1 + 12, "train")  # training.epochs=1
    assert len(re.findall(r"^smoke: epoch \d+/1 \| loss", train_out, re.M)) == 1
    train_log = (work / "ray_results" / "smoke" / "bratslab.log").read_text()
    assert "pid=" in train_log  # the Train workers' and controller's output, routed there
    sweep_out = outputs["sweep jobs/sweep_smoke.yaml"]
    # 2 trials x 1 epoch, the header, a progress line per TTA candidate, a 2-row table, a tally
    assert_console_is_bratslab(sweep_out, 2 + 12 + 7, "sweep")
    assert len(re.findall(r"^sweep-smoke-\S+: epoch 1/1 \| loss", sweep_out, re.M)) == 2
    assert re.search(r"^2 trials: \d completed, \d pruned by ASHA, 0 failed$", sweep_out, re.M)
    assert "--resume sweep-smoke-" in sweep_out
    assert len(list((work / "sweeps").glob("*/bratslab.log"))) == 1
    # One tracking store for every process: the driver's, never a trial's working folder.
    assert sorted(tmp_path.rglob("mlflow.db")) == [work / "mlflow.db"]
    # `train` found ./store (the folder preprocess wrote) and said so.
    assert (tmp_path / "store" / "dataset.json").is_file()
    assert str(tmp_path / "store") in outputs["train jobs/smoke.yaml"]
    assert not (work / "store").exists()
    # predict used the registered champion from the embedded store.
    preds = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert len(preds) == 2
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["region"] for r in rows} == {"wt", "tc", "et"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert (tmp_path / "submission.csv").read_text().count("\n") > 1
    assert "champion" in outputs["models list"]
