"""NICE (Dinh, Krueger & Bengio, 2015): additive couplings on vectors, a diagonal scaling, a factorised prior.

``h = exp(S) ⊙ f_K ∘ … ∘ f_1(u)``, each ``f_k`` an additive coupling over alternating (odd / even) coordinates
with an MLP conditioner; the prior is the standard logistic (the paper's choice for MNIST) or the standard
normal. Data are vectors of ``L`` grey levels in ``[0, 1]``, dequantised uniformly, and ``log_prob`` is the
discrete log-likelihood (``− D·log L`` included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_int, sample_arguments
from fastflow.models.quantization import bits_per_dim, dequantize, standard_normal_log_prob, to_levels
from fastflow.nn import AdditiveCoupling, FlowSequential, MLPConditioner

__all__ = ["NICE"]


class NICE(nn.Module):
    """NICE on ``[B, D]`` vectors (integer levels in ``[0, levels)`` or floats in ``[0, 1]``).

    Args:
        dim: ``D``; num_couplings: ``K`` (the paper: 4); hidden_size: conditioner width (1000);
        num_hidden_layers: conditioner depth (the paper: 5); prior: ``"logistic"`` or ``"gaussian"``;
        levels: grey levels of the data (256).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_couplings: int = 4,
        hidden_size: int = 1000,
        num_hidden_layers: int = 5,
        prior: str = "logistic",
        levels: int = 256,
    ):
        super().__init__()
        dim, num_couplings = check_int("dim", dim, minimum=2), check_int("num_couplings", num_couplings)
        hidden_size, levels = check_int("hidden_size", hidden_size), check_int("levels", levels, minimum=2)
        num_hidden_layers = check_int("num_hidden_layers", num_hidden_layers)
        if prior not in ("logistic", "gaussian"):
            raise ValueError(f"prior must be 'logistic' or 'gaussian', got {prior!r}")
        self.dim, self.prior, self.levels = dim, prior, levels
        couplings = []
        for k in range(num_couplings):
            # Odd and even coordinates take turns; the conditioner sees x with the transformed ones zeroed.
            conditioner = MLPConditioner(dim, dim, hidden_size, num_hidden_layers=num_hidden_layers)
            couplings.append(
                AdditiveCoupling(dim, conditioner=conditioner, mask="checkerboard", flip=bool(k % 2), spatial=False)
            )
        self.flow = FlowSequential(*couplings)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.dim}], got {got}")

    def preprocess(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        self._check(x)
        return dequantize(to_levels(x, self.levels), self.levels, noise).to(self.log_scale.dtype)

    def encode(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """The flow on dequantised ``u [B, D]``: ``(h = exp(S) ⊙ f(u), log|det ∂h/∂u| [B])``."""
        h, logdet = self.flow(u)
        return h * torch.exp(self.log_scale), logdet + self.log_scale.to(logdet.dtype).sum()

    def decode(self, h: Tensor) -> Tensor:
        """The exact inverse of :meth:`encode`: ``u`` (in the data's ``[0, 1]`` scale) from ``h``."""
        u, _ = self.flow.inverse(h * torch.exp(-self.log_scale))
        return u

    def forward(self, x: Tensor, noise: bool | Tensor = True) -> tuple[Tensor, Tensor]:
        """``(h [B, D], log|det ∂h/∂u| [B])`` of the data ``x``."""
        return self.encode(self.preprocess(x, noise))

    def inverse(self, h: Tensor) -> Tensor:
        """``u`` (continuous, in the data's ``[0, 1]`` scale) from ``h``."""
        return self.decode(h)

    def prior_log_prob(self, h: Tensor) -> Tensor:
        """``log p(h)`` ``[B]`` under the factorised prior, in float32 (float64 for float64 ``h``)."""
        h = h if h.dtype == torch.float64 else h.float()
        if self.prior == "logistic":
            return -(F.softplus(h) + F.softplus(-h)).sum(1)
        return standard_normal_log_prob(h)

    def log_prob(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """Discrete log-likelihood in nats, ``[B]``."""
        h, logdet = self(x, noise)
        return self.prior_log_prob(h) + logdet - self.dim * math.log(self.levels)

    def bits_per_dim(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        return bits_per_dim(self.log_prob(x, noise), self.dim)

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], temperature: float = 1.0) -> Tensor:
        """``n`` vectors ``[n, D]`` in ``[0, 1]`` (``[*n, D]`` for a shape ``n``)."""
        shape, count, temperature = sample_arguments(n, temperature)
        size = (count, self.dim)
        if self.prior == "logistic":
            p = torch.rand(size, dtype=self.log_scale.dtype, device=self.log_scale.device).clamp(1e-6, 1 - 1e-6)
            h = torch.log(p) - torch.log1p(-p)
        else:
            h = torch.randn(size, dtype=self.log_scale.dtype, device=self.log_scale.device)
        return self.inverse(temperature * h).clamp(0, 1).reshape(*shape, self.dim)
