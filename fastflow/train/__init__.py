"""Training: the loop (one process or many under ``torchrun``; text by truncated back-propagation through time),
checkpoints written atomically, Polyak averaging, metrics, PNG sample grids (text samples) and loss curves, a lock of
one writer per run folder, and trained runs rebuilt."""

from fastflow.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    newest_intact_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from fastflow.train.distributed import Context
from fastflow.train.ema import EMA
from fastflow.train.images import make_grid, save_grid
from fastflow.train.lock import RunLock, RunLockedError
from fastflow.train.loop import TrainConfig, evaluate, train
from fastflow.train.run import Run, load_run, resume_options
from fastflow.train.text import evaluate_text

__all__ = [
    "EMA",
    "CheckpointError",
    "Context",
    "Run",
    "RunLock",
    "RunLockedError",
    "TrainConfig",
    "evaluate",
    "evaluate_text",
    "latest_checkpoint",
    "load_checkpoint",
    "load_run",
    "make_grid",
    "newest_intact_checkpoint",
    "resume_options",
    "save_checkpoint",
    "save_grid",
    "save_run_checkpoint",
    "train",
]
