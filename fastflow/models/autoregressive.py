"""The shared part of the Bernoulli autoregressive models on binary vectors (FVSBN, NADE, MADE).

``p(x) = Π_k p(x_{o_k} | x_{o_1}, …, x_{o_{k−1}})`` for the model's order ``o`` (its ``order`` buffer), each
conditional a Bernoulli with logit ``forward(x)[:, o_k]``.

Input convention (all three models): ``x [B, D]`` of zeros and ones — floats, bool, or any integer dtype (uint8
as data sets store binarized MNIST); images must be flattened first (the trainer does so for ``vector`` models).
Any other value (``0.5``, ``2``, NaN) is a ``ValueError`` naming ``x`` (:func:`fastflow._checks.check_binary`:
one host read for a CPU tensor or outside autograd; in a differentiable GPU call bad values become NaN instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_binary, sample_arguments
from fastflow.models.quantization import bits_per_dim
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["BinaryAutoregressive", "bernoulli_draw"]


def bernoulli_draw(logits: Tensor, temperature: float, u: Tensor | None = None) -> Tensor:
    """``x = u < σ(logits / T)`` as floats (``u ~ U[0, 1)`` unless given); ``T = 0`` is the mode, ``logits > 0``."""
    if temperature == 0:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits) if u is None else u
    return (u < torch.sigmoid(logits / temperature)).to(logits.dtype)


class BinaryAutoregressive(nn.Module):
    """Base of the Bernoulli autoregressive models: a subclass sets ``dim``, registers an ``order`` buffer and
    implements ``_logits(x)`` (``x`` checked, in the parameters' dtype); ``_sample`` may be overridden by a
    faster incremental sampler (the default makes ``D`` passes of ``_logits``)."""

    dim: int

    def _logits(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reference(self) -> Tensor:
        return next(self.parameters())

    def _input(self, x: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor [B, {self.dim}] of zeros and ones, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must be [B, {self.dim}] (binary vectors; flatten images of C·H·W = {self.dim} first), "
                f"got shape {tuple(x.shape)}"
            )
        parameter = self._reference()
        if x.device != parameter.device:
            raise ValueError(f"x is on {x.device} but the model is on {parameter.device}; move x with x.to(...)")
        return check_binary("x", x, dtype=parameter.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """The logits ``[B, D]`` of every conditional: ``forward(x)[:, order[k]]`` depends on ``x[:, order[:k]]``."""
        return self._logits(self._input(x))

    def _log_prob_from_logits(self, logits: Tensor, x: Tensor) -> Tensor:
        dtype = accumulation_dtype(logits.dtype)
        return -F.binary_cross_entropy_with_logits(logits.to(dtype), x.to(dtype), reduction="none").sum(1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, ``[B]``, float32 (float64 for float64 parameters)."""
        x = self._input(x)
        return self._log_prob_from_logits(self._logits(x), x)

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """``−log p(x) / (D·log 2)``, ``[B]``."""
        return bits_per_dim(self.log_prob(x), self.dim)

    def _sample(self, count: int, temperature: float) -> Tensor:
        parameter = self._reference()
        x = torch.zeros(count, self.dim, dtype=parameter.dtype, device=parameter.device)
        for i in self.order.tolist():
            x[:, i] = bernoulli_draw(self._logits(x)[:, i], temperature)
        return x

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], temperature: float = 1.0) -> Tensor:
        """``n`` binary vectors ``[n, D]`` (``[*n, D]`` for a shape ``n``) as floats in ``{0, 1}`` (the parameters'
        dtype); each conditional's logit is divided by ``temperature`` (``0``: the most likely value)."""
        shape, count, temperature = sample_arguments(n, temperature)
        return self._sample(count, temperature).reshape(*shape, self.dim)
