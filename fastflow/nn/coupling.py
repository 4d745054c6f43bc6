"""Coupling layers (NICE additive, RealNVP / Glow affine) on the fused ``fastflow.ops`` coupling op.

A coupling layer splits ``x`` by a mask into a pass-through part ``x_a`` and a transformed part ``x_b``.
A conditioner network computes ``h = NN(x_a)`` and the fused op applies ``y_b = x_b · s(h_s) + h_t`` and
reduces ``log|det J| = Σ log s(h_s)`` in the same pass; ``h_s = h[:, 1::2]`` and ``h_t = h[:, 0::2]`` are read
in place (Glow's interleaved layout), so no ``chunk``/``cat`` copy is made.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastflow import ops
from fastflow._checks import check_flow_input, check_int
from fastflow.reference.coupling import CLAMP, checkerboard_mask

__all__ = ["AdditiveCoupling", "AffineCoupling", "GlowConditioner", "MLPConditioner"]


class GlowConditioner(nn.Module):
    """Glow's coupling network: conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3.

    The last convolution starts at zero so that every coupling starts as (nearly) the identity, which is
    what keeps deep flows trainable from the first step.

    Shapes: ``x [B, in_channels, H, W]`` (and ``cond [B, cond_channels, H, W]`` or ``[B, cond_channels]``)
    → ``h [B, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512, cond_channels: int = 0):
        super().__init__()
        in_channels, out_channels = check_int("in_channels", in_channels), check_int("out_channels", out_channels)
        hidden_channels = check_int("hidden_channels", hidden_channels)
        self.cond_channels = cond_channels = check_int("cond_channels", cond_channels, minimum=0)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + cond_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(_with_condition(x, cond, self.cond_channels))


class MLPConditioner(nn.Module):
    """The vector version: (Linear → ReLU) × ``num_hidden_layers`` → zero-initialised Linear, ``[B, in] → [B, out]``.

    Two hidden layers by default; NICE used five of 1000 units.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 512,
        cond_features: int = 0,
        num_hidden_layers: int = 2,
    ):
        super().__init__()
        in_features, out_features = check_int("in_features", in_features), check_int("out_features", out_features)
        hidden_features = check_int("hidden_features", hidden_features)
        cond_features = check_int("cond_features", cond_features, minimum=0)
        num_hidden_layers = check_int("num_hidden_layers", num_hidden_layers)
        self.cond_channels = cond_features
        layers: list[nn.Module] = []
        width = in_features + cond_features
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_features), nn.ReLU()]
            width = hidden_features
        self.net = nn.Sequential(*layers, nn.Linear(width, out_features))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(_with_condition(x, cond, self.cond_channels))


def _with_condition(x: Tensor, cond: Tensor | None, cond_channels: int) -> Tensor:
    if cond_channels == 0:
        if cond is not None:
            raise ValueError("cond was given but the conditioner was built with cond_channels=0")
        return x
    if cond is None:
        raise ValueError(f"the conditioner expects cond with {cond_channels} channels, got None")
    if cond.dim() == 2 and x.dim() == 4:
        cond = cond[:, :, None, None].expand(-1, -1, *x.shape[2:])
    if cond.shape[0] != x.shape[0] or cond.shape[1] != cond_channels or cond.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"cond must be [B, {cond_channels}{', H, W' if x.dim() == 4 else ''}] matching x {tuple(x.shape)}, "
            f"got {tuple(cond.shape)}"
        )
    return torch.cat([x, cond.to(x.dtype)], dim=1)


class _Coupling(nn.Module):
    """Shared parts of the coupling layers: the split, the conditioner call and the checks."""

    affine: bool

    def __init__(
        self,
        num_channels: int,
        *,
        conditioner: nn.Module | None,
        mask: str,
        hidden_channels: int,
        flip: bool,
        spatial: bool,
        cond_channels: int,
    ):
        super().__init__()
        num_channels = check_int("num_channels", num_channels)
        # Checked even with a given conditioner (which does not use them): a bad value is a mistake either way.
        hidden_channels = check_int("hidden_channels", hidden_channels)
        cond_channels = check_int("cond_channels", cond_channels, minimum=0)
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"mask must be 'channel' or 'checkerboard', got {mask!r}")
        if mask == "channel" and num_channels % 2:
            raise ValueError(f"num_channels must be even for mask='channel' (it splits in halves), got {num_channels}")
        self.num_channels = num_channels
        self.mask = mask
        self.flip = flip
        self.spatial = spatial
        # Channels the conditioner reads (x_a) and the channels it transforms (x_b).
        self.param_channels = num_channels // 2 if mask == "channel" else num_channels
        out_channels = self.param_channels * (2 if self.affine else 1)
        if conditioner is None:
            make = GlowConditioner if spatial else MLPConditioner
            conditioner = make(self.param_channels, out_channels, hidden_channels, cond_channels)
        self.conditioner = conditioner
        self._out_channels = out_channels

    def extra_repr(self) -> str:
        return f"{self.num_channels}, mask={self.mask!r}, flip={self.flip}"

    def _couple(self, x: Tensor, cond: Tensor | None, inverse: bool, name: str = "x") -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, cond, inverse=True, name="y")

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        check_flow_input(name, x, self.num_channels, dims=(4,) if self.spatial else (2,))

    def _conditioner_output(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """``h = NN(x_a)``: ``[B, k·C', ...]`` with ``k = 2`` (affine) or 1 (additive)."""
        if self.mask == "channel":
            half = self.num_channels // 2
            x_a = x[:, half:] if self.flip else x[:, :half]
        else:
            x_a = torch.where(checkerboard_mask(x, self.flip), 0.0, x)
        h = self.conditioner(x_a) if cond is None else self.conditioner(x_a, cond)
        expected = (x.shape[0], self._out_channels, *x.shape[2:])
        if not isinstance(h, Tensor) or tuple(h.shape) != expected:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"conditioner output must have shape {expected}, got {got}")
        # Under autocast the conditioner computes in bf16/fp16 while the flow's state x keeps its dtype: the
        # invertible part stays exact to x's precision, the conditioner's FLOPs run in the low one.
        return h if h.dtype == x.dtype else h.to(x.dtype)


class AffineCoupling(_Coupling):
    """Affine coupling ``y_b = x_b · s(h_s) + h_t``, ``(h_t, h_s) = NN(x_a)`` (RealNVP, Glow).

    Args:
        num_channels: ``C`` of ``x [B, C, H, W]`` (or ``D`` of ``x [B, D]`` with ``spatial=False``).
        conditioner: module mapping ``x_a`` (and ``cond``) to ``h [B, 2·C', ...]``, with ``h_t = h[:, 0::2]``,
            ``h_s = h[:, 1::2]`` and ``C' = C/2`` (channel mask) or ``C`` (checkerboard, ``x_a`` is ``x`` with
            the transformed positions zeroed). Default: :class:`GlowConditioner` / :class:`MLPConditioner`.
        mask: ``"channel"`` or ``"checkerboard"``; ``flip`` swaps the two parts.
        scale: ``"sigmoid"`` (Glow, ``sigmoid(h_s + 2)``) or ``"exp"`` (RealNVP, ``exp(c·tanh(h_s/c))``).
        spatial: ``False`` for vectors ``[B, D]``. ``cond_channels``: channels of ``cond`` for the default
            conditioner of a conditional flow.

    ``forward(x) -> (y, logdet [B])`` and ``inverse(y) -> (x, logdet [B])``, each the log-determinant of
    the direction called.

    Example:
        >>> layer = AffineCoupling(4, hidden_channels=32)
        >>> y, logdet = layer(torch.randn(2, 4, 8, 8))
    """

    affine = True

    def __init__(
        self,
        num_channels: int,
        *,
        conditioner: nn.Module | None = None,
        mask: str = "channel",
        scale: str = "sigmoid",
        hidden_channels: int = 512,
        flip: bool = False,
        spatial: bool = True,
        cond_channels: int = 0,
        clamp: float = CLAMP,
    ):
        if scale not in ("sigmoid", "exp"):
            raise ValueError(f"scale must be 'sigmoid' or 'exp', got {scale!r}")
        super().__init__(
            num_channels, conditioner=conditioner, mask=mask, hidden_channels=hidden_channels, flip=flip,
            spatial=spatial, cond_channels=cond_channels,
        )
        self.scale = scale
        self.clamp = clamp

    def _couple(self, x: Tensor, cond: Tensor | None, inverse: bool, name: str = "x") -> tuple[Tensor, Tensor]:
        self._check_input(x, name)
        h = self._conditioner_output(x, cond)
        return ops.affine_coupling(
            x, h[:, 1::2], h[:, 0::2], mask=self.mask, scale=self.scale, flip=self.flip, inverse=inverse,
            clamp=self.clamp,
        )



class AdditiveCoupling(_Coupling):
    """NICE's additive coupling ``y_b = x_b + h_t``, ``h_t = NN(x_a)``; volume preserving (``logdet = 0``).

    Arguments as in :class:`AffineCoupling` (the conditioner outputs ``h_t [B, C', ...]`` only).
    """

    affine = False

    def __init__(
        self,
        num_channels: int,
        *,
        conditioner: nn.Module | None = None,
        mask: str = "channel",
        hidden_channels: int = 512,
        flip: bool = False,
        spatial: bool = True,
        cond_channels: int = 0,
    ):
        super().__init__(
            num_channels, conditioner=conditioner, mask=mask, hidden_channels=hidden_channels, flip=flip,
            spatial=spatial, cond_channels=cond_channels,
        )

    def _couple(self, x: Tensor, cond: Tensor | None, inverse: bool, name: str = "x") -> tuple[Tensor, Tensor]:
        self._check_input(x, name)
        shift = self._conditioner_output(x, cond)
        return ops.additive_coupling(x, shift, mask=self.mask, flip=self.flip, inverse=inverse)

