"""NADE (Larochelle & Murray 2011): weight-tied hidden layers of a chain of logistic regressions.

``h_i = σ(W[:, <i] x_<i + c)``, ``p(x_i = 1 | x_<i) = σ(V_i · h_i + b_i)`` in the natural order; ``W [H, D]``,
``c [H]``, ``V [D, H]``, ``b [D]``. The likelihood is one scan over the dimensions (``a_{i+1} = a_i + W[:, i] x_i``)
and sampling updates ``a`` by one column per dimension: the fused op ``fastflow.ops.nade`` / ``nade_sample``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import fastflow.ops
from fastflow._checks import check_int
from fastflow.models.autoregressive import BinaryAutoregressive
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["NADE"]


class NADE(BinaryAutoregressive):
    """NADE on binary vectors ``[B, D]`` (see :mod:`fastflow.models.autoregressive` for the input convention).

    Args:
        dim: ``D``; hidden_size: ``H`` (500, the paper's choice for binarized MNIST).
    """

    def __init__(self, dim: int, hidden_size: int = 500):
        super().__init__()
        self.dim = dim = check_int("dim", dim)
        self.hidden_size = hidden_size = check_int("hidden_size", hidden_size)
        self.W = nn.Parameter(torch.randn(hidden_size, dim) / math.sqrt(dim))
        self.c = nn.Parameter(torch.zeros(hidden_size))
        self.V = nn.Parameter(torch.randn(dim, hidden_size) / math.sqrt(hidden_size))
        self.b = nn.Parameter(torch.zeros(dim))
        self.register_buffer("order", torch.arange(dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_size={self.hidden_size}"

    def _logits(self, x: Tensor) -> Tensor:
        return fastflow.ops.nade(x, self.W, self.c, self.V, self.b)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, ``[B]``, float32 (float64 for float64 parameters)."""
        x = self._input(x)
        log_prob = fastflow.ops.nade(x, self.W, self.c, self.V, self.b)[1]
        return log_prob.to(accumulation_dtype(self.W.dtype))

    def _sample(self, count: int, temperature: float) -> Tensor:
        V, b = self.V, self.b
        if temperature == 0:  # u = 1/2: x_i = σ(logit) > 1/2, the mode of each conditional
            u = torch.full((count, self.dim), 0.5, dtype=V.dtype, device=V.device)
        else:
            u = torch.rand(count, self.dim, dtype=V.dtype, device=V.device)
            V, b = V / temperature, b / temperature
        return fastflow.ops.nade_sample(self.W, self.c, V, b, u)
