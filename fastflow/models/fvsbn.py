"""FVSBN, the fully visible sigmoid belief network (Neal 1992; Frey 1998): logistic regressions in a chain.

``p(x_i = 1 | x_<i) = σ(Σ_{j<i} θ_ij x_j + b_i)`` in the natural order, with ``θ`` strictly lower-triangular: a
:class:`~fastflow.nn.MaskedLinear` whose mask zeroes the diagonal and the upper triangle, so that those weights
get no gradient and never matter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow._checks import check_int
from fastflow.models.autoregressive import BinaryAutoregressive, bernoulli_draw
from fastflow.nn import MaskedLinear

__all__ = ["FVSBN"]


class FVSBN(BinaryAutoregressive):
    """FVSBN on binary vectors ``[B, D]`` (see :mod:`fastflow.models.autoregressive` for the input convention).

    Parameters: ``linear.weight`` (``θ``, ``[D, D]``, used below the diagonal only), ``linear.bias`` (``b``).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim = check_int("dim", dim)
        self.linear = MaskedLinear(dim, dim, mask=torch.ones(dim, dim).tril(-1))
        self.register_buffer("order", torch.arange(dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _logits(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def _sample(self, count: int, temperature: float) -> Tensor:
        # O(D) per dimension: only row i of θ is needed for x_i.
        weight, bias = self.linear.weight * self.linear.mask, self.linear.bias
        x = torch.zeros(count, self.dim, dtype=weight.dtype, device=weight.device)
        for i in range(self.dim):
            x[:, i] = bernoulli_draw(x[:, :i] @ weight[i, :i] + bias[i], temperature)
        return x
