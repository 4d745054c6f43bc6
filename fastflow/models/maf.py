"""MAF (Papamakarios, Pavlakou & Murray 2017): a stack of masked autoregressive flow layers.

``z = f_K ∘ … ∘ f_1(y)``, each ``f_k`` a :class:`~fastflow.nn.MaskedAutoregressiveFlow` (a MADE with Gaussian
conditionals: ``u_i = (y_i − μ_i(y_<i)) · exp(−α_i(y_<i))``), the order reversed from one layer to the next; the
base is the standard normal. Density evaluation is one pass per layer, sampling ``D`` passes per layer.

Data: real vectors ``[B, D]`` (``levels=None``: ``log_prob`` is their density), or discrete ones (``levels=L``:
integer levels in ``[0, L)`` or floats ``k/(L−1)`` in ``[0, 1]``, e.g. ``L = 2`` for binarized MNIST, 256 for
8-bit images), which follow NICE's conventions: dequantised uniformly, ``u = (k + ε)/L``, and ``log_prob`` is the
discrete log-likelihood bound (``− D·log L`` included), so that bits/dim compare with the other models. Discrete
data then go through the paper's logit, ``y = logit(α + (1 − 2α)·u)``, whose log-determinant is included too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastflow._checks import check_flow_input, check_int, check_real, check_sizes, sample_arguments
from fastflow.models.quantization import bits_per_dim, dequantize, standard_normal_log_prob, to_levels
from fastflow.nn import FlowSequential, MaskedAutoregressiveFlow

__all__ = ["MAF"]


class MAF(nn.Module):
    """MAF on vectors ``[B, D]``.

    Args:
        dim: ``D``; num_layers: ``K`` (the paper: 5); hidden_sizes: each MADE's hidden widths (an int for one).
        levels: ``None`` for real data, else the number of levels of discrete data (``>= 2``).
        alpha: the logit's margin for discrete data (the paper's ``λ = 10⁻⁶``); ``None``: no logit (the flow
            sees ``u`` in ``(0, 1)`` itself, as NICE).
        seed: the seed of the MADEs' hidden degrees.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_layers: int = 5,
        hidden_sizes: int | Sequence[int] = (512,),
        levels: int | None = None,
        alpha: float | None = 1e-6,
        seed: int = 0,
    ):
        super().__init__()
        self.dim = dim = check_int("dim", dim)
        num_layers = check_int("num_layers", num_layers)
        hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.levels = None if levels is None else check_int("levels", levels, minimum=2)
        self.alpha = None if alpha is None else check_real("alpha", alpha, low=0.0, high=0.5)
        seed = check_int("seed", seed, minimum=0)
        natural = torch.arange(dim)
        self.flow = FlowSequential(*(
            MaskedAutoregressiveFlow(dim, hidden_sizes, order=natural if k % 2 == 0 else natural.flip(0),
                                     seed=seed + k)
            for k in range(num_layers)
        ))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}, alpha={self.alpha}"

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def preprocess(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """The flow's input space before the logit: ``x`` itself (real data) or the dequantised ``u``."""
        if self.levels is None:
            return check_flow_input("x", x, self.dim, dims=(2,)).to(self._dtype)
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.dim}] (flatten images first), got {got}")
        return dequantize(to_levels(x, self.levels).to(self._dtype), self.levels, noise)

    def _logit(self, u: Tensor) -> tuple[Tensor, Tensor]:
        if self.levels is None or self.alpha is None:
            return u, u.new_zeros(u.shape[0], dtype=torch.float64 if u.dtype == torch.float64 else torch.float32)
        p = self.alpha + (1 - 2 * self.alpha) * u
        y = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).sum(1)
        return y, logdet

    def encode(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det ∂z/∂u|)`` of the preprocessed ``u`` (the logit, then the flow)."""
        y, logdet_logit = self._logit(u)
        z, logdet = self.flow(y)
        return z, logdet + logdet_logit

    def decode(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`encode`."""
        y, _ = self.flow.inverse(z)
        if self.levels is None or self.alpha is None:
            return y
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)

    def forward(self, x: Tensor, noise: bool | Tensor = True) -> tuple[Tensor, Tensor]:
        """``(z [B, D], log|det ∂z/∂u| [B])`` of the data ``x`` (``noise``: ignored for real data)."""
        return self.encode(self.preprocess(x, noise))

    def inverse(self, z: Tensor) -> Tensor:
        """Data (real; or continuous in ``[0, 1]`` for discrete data, before quantisation) from ``z``."""
        return self.decode(z)

    def log_prob(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """Log-density of real data, or the discrete log-likelihood bound, in nats ``[B]``."""
        z, logdet = self(x, noise)
        log_prob = standard_normal_log_prob(z) + logdet
        if self.levels is not None:
            log_prob = log_prob - self.dim * math.log(self.levels)
        return log_prob

    def bits_per_dim(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        return bits_per_dim(self.log_prob(x, noise), self.dim)

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], temperature: float = 1.0, *, quantize: bool = False) -> Tensor:
        """``n`` vectors ``[n, D]`` (``[*n, D]`` for a shape ``n``) from ``z ~ N(0, T²)``: real ones, or for
        discrete data continuous values in ``[0, 1]`` (``quantize``: the levels ``k/(L−1)`` they fall in)."""
        shape, count, temperature = sample_arguments(n, temperature)
        parameter = next(self.parameters())
        z = temperature * torch.randn(count, self.dim, dtype=parameter.dtype, device=parameter.device)
        x = self.inverse(z)
        if self.levels is not None:
            x = x.clamp(0, 1)
            if quantize:
                x = torch.clamp(torch.floor(x * self.levels), max=self.levels - 1) / (self.levels - 1)
        return x.reshape(*shape, self.dim)
