"""Glow's invertible 1×1 convolution ``y = W·x`` per pixel, ``W`` parametrised by its LU decomposition.

``W = P·L·(U + diag(s))`` with ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly
upper-triangular and ``s = sign·exp(log|s|)``: ``log|det W| = Σ log|s|`` needs no ``slogdet`` (and no host
synchronisation), the inverse needs only triangular solves, and ``W`` stays invertible by construction.
``lu=False`` keeps a plain weight (``slogdet`` and ``inverse`` on every call) for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow import ops
from fastflow.reference.actnorm_invconv import lu_weight
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["InvConv1x1"]


def _random_rotation(num_channels: int) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))
    return q


class InvConv1x1(nn.Module):
    """Invertible 1×1 convolution on ``[B, C, H, W]``; ``log|det J| = H·W·log|det W|`` per example.

    Initialised at a random rotation (``|det W| = 1``), as in Glow.
    """

    def __init__(self, num_channels: int, lu: bool = True):
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        self.lu = lu
        w = _random_rotation(num_channels)
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = torch.diagonal(upper)
            # (P v)_i = v[perm[i]]
            self.register_buffer("perm", p.argmax(dim=1))
            self.register_buffer("sign_s", torch.sign(s).float())
            self.lower = nn.Parameter(torch.tril(lower, -1).float())
            self.upper = nn.Parameter(torch.triu(upper, 1).float())
            self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        else:
            self.weight = nn.Parameter(w.float())

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"

    def matrix(self) -> Tensor:
        """The ``C×C`` matrix ``W``."""
        if self.lu:
            return lu_weight(self.lower, self.upper, self.log_s, perm=self.perm, sign_s=self.sign_s)
        return self.weight

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.num_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.num_channels}, H, W], got {got}")

    def _lu_call(
        self, x: Tensor, log_scale: Tensor | None, bias: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        return ops.actnorm_invconv(
            x, log_scale, bias, self.lower, self.upper, self.log_s, perm=self.perm, sign_s=self.sign_s,
            inverse=inverse,
        )

    def _plain(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        weight = torch.linalg.inv(self.weight) if inverse else self.weight
        y = F.conv2d(x, weight.to(x.dtype)[:, :, None, None])
        dtype = accumulation_dtype(x.dtype)
        logdet = x.shape[2] * x.shape[3] * torch.linalg.slogdet(self.weight.to(dtype))[1]
        return y, (-logdet if inverse else logdet).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if not self.lu:
            return self._plain(x, inverse=False)
        # No ActNorm: None, not zeros, so that the plain reference makes no passes for an identity ActNorm.
        return self._lu_call(x, None, None, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        if not self.lu:
            return self._plain(y, inverse=True)
        return self._lu_call(y, None, None, inverse=True)
