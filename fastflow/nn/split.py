"""Glow's factor-out (split) with its learned conditional prior, written as a bijection.

Glow models the factored-out half ``z_2`` as ``N(μ(z_1), σ(z_1)²)`` with ``(μ, log σ)`` from a zero-initialised
convolution of the kept half ``z_1``. Standardising ``ε_2 = (z_2 − μ)/σ`` is an affine coupling, so ``Split``
returns ``y = [z_1, ε_2]`` and ``log|det J| = −Σ log σ``: the model then scores ``ε_2`` under ``N(0, I)``, which
equals Glow's ``log N(z_2; μ, σ²)``, and sampling at temperature ``T`` draws ``ε_2 ~ N(0, T²)``.
"""

from __future__ import annotations

from torch import Tensor

from fastflow._checks import check_int
from fastflow.nn.coupling import AffineCoupling
from fastflow.nn.zeroconv import ZeroConv2d

__all__ = ["Split"]

#: Soft clamp of the prior's ``log σ`` (``c·tanh(h/c)``): wide enough never to bind in practice, finite always.
PRIOR_CLAMP = 6.0


class Split(AffineCoupling):
    """``[B, C, H, W] → [B, C, H, W]``: keeps ``z_1 = x[:, :C/2]``, standardises ``z_2 = x[:, C/2:]``.

    ``forward`` returns ``([z_1, ε_2], −Σ log σ)``; ``inverse`` rebuilds ``z_2 = μ + σ·ε_2``.
    """

    forward_is_inverse = True

    def __init__(self, num_channels: int, *, cond_channels: int = 0):
        if cond_channels:
            raise ValueError("Split takes no cond: its prior depends on the kept half only")
        num_channels = check_int("num_channels", num_channels)
        if num_channels % 2:
            raise ValueError(
                f"num_channels must be even (Split keeps one half, factors out the other), got {num_channels}"
            )
        super().__init__(
            num_channels,
            conditioner=ZeroConv2d(num_channels // 2, num_channels),
            mask="channel",
            scale="exp",
            clamp=PRIOR_CLAMP,
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # The coupling's inverse direction is the standardisation (z_2 − μ)/σ.
        return self._couple(x, cond, inverse=True)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, cond, inverse=False, name="y")
