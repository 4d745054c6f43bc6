"""``FlowSequential``: a chain of invertible layers whose log-determinants add up."""

from __future__ import annotations

from torch import Tensor, nn

from fastflow._checks import check_floating

__all__ = ["FlowSequential"]


class FlowSequential(nn.Sequential):
    """``f = f_K ∘ … ∘ f_1``: ``forward(x) -> (z, Σ_k log|det J_k|)``, ``inverse(z)`` runs the layers backwards.

    Every layer must have ``forward(x, cond=None) -> (y, logdet)`` and ``inverse(y, cond=None) -> (x, logdet)``;
    ``x`` must be a floating-point tensor (checked here too, for layers that do not check it themselves).
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_floating("x", x)
        logdet = 0.0
        for layer in self:
            x, layer_logdet = layer(x, cond)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_floating("y", y)
        logdet = 0.0
        for layer in reversed(self):
            y, layer_logdet = layer.inverse(y, cond)
            logdet = logdet + layer_logdet
        return y, logdet
