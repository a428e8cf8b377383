"""The Examples sections of the run commands' ``--help`` (one place, so they stay consistent
with README's "Using it" block: same folders, same job specs)."""

from __future__ import annotations


def examples(*lines: str) -> str:
    """An epilog of example command lines, one per line in every terminal width."""
    # Typer's rich help keeps the single newlines of an epilog: one command per line.
    return "Examples:\n\n" + "\n".join(f"  {line}" for line in lines)


TRAIN = examples(
    "bratslab train jobs/smoke.yaml",
    "bratslab train jobs/train_cpu.yaml --set training.epochs=5 --name cpu-5",
    "bratslab train jobs/train_cpu.yaml --folds all   # 5-fold CV under one parent run",
)
SWEEP = examples(
    "bratslab sweep jobs/sweep_smoke.yaml",
    "bratslab sweep --resume NAME   # NAME: the sweep's folder name, printed in its header",
)
PREDICT = examples(
    "bratslab predict --model models:/bratslab-sweeps@champion -i raw_test/ -o pred/",
    "bratslab predict --model model_dir/ -i raw_test/ -o pred/ --tta none --device cuda",
)
EVALUATE = examples(
    "bratslab evaluate --pred pred/ --ref raw_test/ -o metrics.csv",
    "bratslab evaluate --pred pred/ --ref raw_test/ --metric panoptica --profile gli-post",
)
EVALUATE_MODEL = examples(
    "bratslab evaluate-model --model models:/bratslab-sweeps@champion --store store --fold 0",
)
