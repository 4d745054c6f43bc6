"""Training: the loop (one process or many under ``torchrun``), checkpoints written atomically, Polyak averaging,
metrics, PNG sample grids and loss curves."""

from fastflow.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_run_checkpoint
from fastflow.train.distributed import Context
from fastflow.train.ema import EMA
from fastflow.train.images import save_grid
from fastflow.train.loop import TrainConfig, evaluate, train

__all__ = [
    "EMA",
    "Context",
    "TrainConfig",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_grid",
    "save_run_checkpoint",
    "train",
]
