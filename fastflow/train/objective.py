"""What the trainer minimises and reports: the negative log-likelihood of each example, in the unit of its field.

- Images of more than 2 levels (digits, Fashion-MNIST, CIFAR-10): **bits/dim**, ``−log P(x) / (D·log 2)``, as the
  flow papers report it; continuous flows see the dequantised image ``(x + ε)/L`` and ``log P`` is the discrete
  likelihood (the dequantisation term included).
- Binary data (binarized MNIST): **nats** per example, ``−log P(x)``, as the FVSBN, NADE, MADE and PixelCNN papers
  report it. A Bernoulli model takes ``x`` in {0, 1} as floats; a flow dequantises it like any image.
- Text: **nats per character**, ``−log P(x) / T`` (``fastflow.train.text``).

A model whose ``log_prob`` takes ``noise=`` is a continuous model of dequantised data: the trainer hands it the
step's dequantisation noise (seeded by the step, so that every process count sees the same noise). Any other model
is a discrete one and gets ``x`` itself.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["BITS_PER_DIM", "NATS", "NATS_PER_CHAR", "Objective", "Unit", "takes_noise", "unit_for", "unit_named"]


@dataclass(frozen=True)
class Unit:
    """A unit of negative log-likelihood: its name in reports and its key in ``metrics.jsonl`` (``test_<key>``)."""

    name: str
    key: str
    tag: str  # TensorBoard's scalar name: train/<tag>, test/<tag>, valid/<tag>
    per_dim: bool = False  # divided by the number of dimensions (characters) of an example
    bits: bool = False  # in bits rather than nats

    def of(self, nats: Tensor, num_dims: int) -> Tensor:
        """``nats`` (``−log P`` per example) in this unit."""
        if self.per_dim:
            nats = nats / num_dims
        return nats / math.log(2.0) if self.bits else nats


BITS_PER_DIM = Unit("bits/dim", "bpd", "bits_per_dim", per_dim=True, bits=True)
NATS = Unit("nats", "nll", "nll_nats")
NATS_PER_CHAR = Unit("nats/char", "nats_per_char", "nats_per_char", per_dim=True)
_UNITS = {unit.name: unit for unit in (BITS_PER_DIM, NATS, NATS_PER_CHAR)}


def unit_for(levels: int) -> Unit:
    """Nats for binary data, bits/dim for images of more levels (the units of each field's papers)."""
    return NATS if levels == 2 else BITS_PER_DIM


def unit_named(name: str) -> Unit:
    """The unit whose ``name`` a checkpoint stores (``"bits/dim"``, ``"nats"``, ``"nats/char"``)."""
    if name not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {name!r}")
    return _UNITS[name]


def takes_noise(model: nn.Module) -> bool:
    """Whether ``model.log_prob`` takes the dequantisation noise (a continuous model of discrete data)."""
    return "noise" in inspect.signature(model.log_prob).parameters


class Objective(nn.Module):
    """Per-example negative log-likelihood of ``model`` in ``unit`` as ``forward(x, noise)``, so that
    DistributedDataParallel sees the training call. ``vector`` models take ``[B, C·H·W]``."""

    def __init__(self, model: nn.Module, vector: bool, unit: Unit = BITS_PER_DIM):
        super().__init__()
        self.model = model
        self.vector = vector
        self.unit = unit
        self.dequantize = takes_noise(model)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        if self.vector:
            x, noise = x.flatten(1), noise.flatten(1)
        if self.dequantize:
            log_prob = self.model.log_prob(x, noise=noise)
        else:
            log_prob = self.model.log_prob(x)
        return self.unit.of(-log_prob, x[0].numel())
