"""Which of the metrics the workers report each epoch the job's MLflow run logs, and when."""

from __future__ import annotations

NODE_IP_KEY = "node_ip"  # reported by every rank (a string: Ray Train passes it, MLflow skips it)
WORKER_NODES_TAG = "bratslab.worker_nodes"  # MLflow tag: "0=IP,1=IP", each rank's node
LOGGED_EVERY_EPOCH = ("train/loss", "time/epoch_s", "time/train_s", "time/train_cpu_s")
LOGGED_EVERY_EPOCH += ("time/data_wait_frac",)
LOGGED_EVERY_EPOCH += ("throughput/samples_per_s", "resumed_from_epoch")
LOGGED_ON_VALIDATION = ("val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean", "time/val_s")
LOGGED_ON_VALIDATION += (
    "val/lesion_dice_wt",
    "val/lesion_dice_tc",
    "val/lesion_dice_et",
    "val/lesion_dice_mean",
)


def logged_on_validation(key: str) -> bool:
    """Whether an epoch that validated logs ``key``: the keys above, and the Dice of every
    region of the store's profile (``val/dice_rc``, ``val/lesion_dice_netc``, ...)."""
    return key in LOGGED_ON_VALIDATION or key.startswith(("val/dice_", "val/lesion_dice_"))


def best_summary_key(key: str) -> bool:
    """Whether the best epoch's ``key`` is logged again as ``best/<key>``: the voxel Dice per
    region and their mean, and the lesion-wise mean."""
    return key.startswith("val/dice_") or key == "val/lesion_dice_mean"
