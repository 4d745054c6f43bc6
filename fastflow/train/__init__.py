"""Training: the loop, checkpoints written atomically, metrics and PNG sample grids."""

from fastflow.train.checkpoint import load_checkpoint, save_checkpoint
from fastflow.train.images import save_grid
from fastflow.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "load_checkpoint", "save_checkpoint", "save_grid", "train"]
