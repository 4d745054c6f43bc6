"""NADE (Larochelle & Murray 2011): weight-tied hidden layers of a chain of logistic regressions.

``h_i = σ(W[:, <i] x_<i + c)``, ``p(x_i = 1 | x_<i) = σ(V_i · h_i + b_i)`` in the natural order; ``W [H, D]``,
``c [H]``, ``V [D, H]``, ``b [D]``. The likelihood is one scan over the dimensions (``a_{i+1} = a_i + W[:, i] x_i``)
and sampling updates ``a`` by one column per dimension: the fused op ``fastflow.ops.nade`` / ``nade_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastflow.ops
from fastflow._checks import check_int
from fastflow.models.autoregressive import BinaryAutoregressive
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["NADE"]


# Plain-PyTorch stand-ins for the fused op while it is being written (to go once fastflow.ops.nade exists).
def _nade(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits [B, D], log_prob [B])``; materialises ``[B, D, H]``."""
    steps = x.unsqueeze(-1) * W.t()  # [B, D, H]: W[:, i] x_i
    a = c + F.pad(torch.cumsum(steps, 1)[:, :-1], (0, 0, 1, 0))  # a_i = c + Σ_{j<i} W[:, j] x_j
    logits = (torch.sigmoid(a) * V).sum(-1) + b
    dtype = accumulation_dtype(logits.dtype)
    log_prob = -F.binary_cross_entropy_with_logits(logits.to(dtype), x.to(dtype), reduction="none").sum(1)
    return logits, log_prob


def _nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, u: Tensor) -> Tensor:
    """``x [B, D]`` with ``x_i = u_i < σ(logit_i)``, one ``O(H)`` update of ``a`` per dimension."""
    x = torch.zeros_like(u)
    a = c.expand(u.shape[0], -1).clone()
    for i in range(u.shape[1]):
        x[:, i] = (u[:, i] < torch.sigmoid(torch.sigmoid(a) @ V[i] + b[i])).to(u.dtype)
        a = a + x[:, i : i + 1] * W[:, i]
    return x


def _ops():
    if hasattr(fastflow.ops, "nade"):
        return fastflow.ops.nade, fastflow.ops.nade_sample
    return _nade, _nade_sample


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
        return _ops()[0](x, self.W, self.c, self.V, self.b)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, ``[B]``, float32 (float64 for float64 parameters)."""
        x = self._input(x)
        log_prob = _ops()[0](x, self.W, self.c, self.V, self.b)[1]
        return log_prob.to(accumulation_dtype(self.W.dtype))

    def _sample(self, count: int, temperature: float) -> Tensor:
        V, b = self.V, self.b
        if temperature == 0:  # u = 1/2: x_i = σ(logit) > 1/2, the mode of each conditional
            u = torch.full((count, self.dim), 0.5, dtype=V.dtype, device=V.device)
        else:
            u = torch.rand(count, self.dim, dtype=V.dtype, device=V.device)
            V, b = V / temperature, b / temperature
        return _ops()[1](self.W, self.c, V, b, u)
