"""What a run shows while it trains: a progress bar on a terminal, one plain line per logged interval in a log
file, and optionally TensorBoard.

- Standard error a terminal: a tqdm bar with bits/dim and images/s (characters/s for text), updated in place.
- Standard error a file or a pipe (a batch job's log, ``2> train.log``): no carriage returns; one line per
  ``log_every`` steps (``step 120/1500  loss 3.412 bits/dim  lr 2.0e-03  grad 1.84  910 images/s``).
- ``tensorboard`` (a folder): ``torch.utils.tensorboard`` scalars ``train/bits_per_dim`` (the loss; ``nll_nats``
  for binary data), ``test/bits_per_dim`` (and ``valid/...``), ``train/lr``, ``train/grad_norm``,
  ``train/images_per_s`` and the sample grids as images.
  A resumed run purges the events logged after its checkpoint, so the curves read as one run.

Only the main process (rank 0) shows anything.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from torch import Tensor
from tqdm.auto import tqdm

from fastflow.train.objective import BITS_PER_DIM, Unit

__all__ = ["Monitor", "check_tensorboard"]


def check_tensorboard() -> None:
    """Raise a clear error when TensorBoard logging cannot work here (before any training)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise ValueError(f"tensorboard: logging needs the tensorboard package ({error}); install it with "
                         "`pip install tensorboard` (or `pip install fastflow[tensorboard]`), or drop --tensorboard"
                         ) from None


class Monitor:
    """Progress and metrics of one run, for rank 0 (``enabled=False`` on the other ranks: everything no-ops)."""

    def __init__(self, *, total: int, initial: int, enabled: bool, progress: bool, tensorboard: str | None = None,
                 stream: TextIO | None = None, unit: Unit = BITS_PER_DIM, throughput: str = "images"):
        self.total, self.enabled, self.unit = total, enabled, unit
        self.throughput = throughput  # what a step's throughput counts: metrics' "<throughput>_per_s"
        self.stream = stream or sys.stderr
        interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines = enabled and progress and not interactive
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and progress and interactive),
                        desc="train", unit="step", file=self.stream)
        self.writer = None
        if enabled and tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard, purge_step=initial + 1 if initial else None)

    def write(self, text: str) -> None:
        """A line of news (an evaluation, a resume) that does not break the bar."""
        if self.enabled:
            tqdm.write(text)

    def update(self) -> None:
        self.bar.update(1)

    def log(self, metrics: dict[str, Any]) -> None:
        """One logged interval: ``step``, ``loss`` (in the unit), ``lr``, ``grad_norm``, ``images_per_s`` (or the
        monitor's ``<throughput>_per_s``)."""
        if not self.enabled:
            return
        rate = metrics[f"{self.throughput}_per_s"]
        self.bar.set_postfix({self.unit.key: f"{metrics['loss']:.3f}", f"{self.throughput}/s": f"{rate:.0f}"})
        if self.lines:
            print(f"step {metrics['step']}/{self.total}  loss {metrics['loss']:.3f} {self.unit.name}  "
                  f"lr {metrics['lr']:.1e}"
                  f"  grad {metrics['grad_norm']:.3g}  {rate:.0f} {self.throughput}/s", file=self.stream,
                  flush=True)
        if self.writer is not None:
            step = metrics["step"]
            self.writer.add_scalar(f"train/{self.unit.tag}", metrics["loss"], step)
            self.writer.add_scalar("train/lr", metrics["lr"], step)
            self.writer.add_scalar("train/grad_norm", metrics["grad_norm"], step)
            self.writer.add_scalar(f"train/{self.throughput}_per_s", rate, step)

    def evaluation(self, step: int, scores: dict[str, float], grid: Tensor | None) -> None:
        """The held-out scores (``test_<key>``, ``valid_<key>``) and the sample grid ``[C, H, W]`` in ``[0, 1]``
        (None: no image, e.g. for text)."""
        if self.writer is not None:
            for name, value in scores.items():
                self.writer.add_scalar(f"{name.partition('_')[0]}/{self.unit.tag}", value, step)
            if grid is not None:
                self.writer.add_image("samples", grid, step)
            self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
