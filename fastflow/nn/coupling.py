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
from fastflow._autograd import vjp
from fastflow._checks import check_flow_input, check_int
from fastflow.nn import conv_stack
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
        x = _with_condition(x, cond, self.cond_channels)
        # On CPUs, at the larger levels: channels-last, with fused convolution + ReLU without autograd.
        return conv_stack.run(self.net, x) if conv_stack.applies(self.net, x) else self.net(x)


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
    #: Whether ``forward`` runs the coupling's inverse map (``Split``: its forward is the standardisation).
    forward_is_inverse: bool = False

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

    def _transform(self, x: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The fused op on ``x`` given the conditioner's output ``h``: ``(y, logdet)`` (or the inverse's)."""
        raise NotImplementedError

    def _couple(self, x: Tensor, cond: Tensor | None, inverse: bool, name: str = "x") -> tuple[Tensor, Tensor]:
        self._check_input(x, name)
        return self._transform(x, self._conditioner_output(self._conditioner_input(x), cond, x), inverse)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, cond, inverse=True, name="y")

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        check_flow_input(name, x, self.num_channels, dims=(4,) if self.spatial else (2,))

    def _conditioner_input(self, x: Tensor) -> Tensor:
        """``x_a``, what the conditioner reads: a half of the channels, or ``x`` with the transformed positions
        zeroed. The same for ``x`` and for the layer's output ``y``, which passes ``x_a`` through unchanged."""
        if self.mask == "channel":
            half = self.num_channels // 2
            return x[:, half:] if self.flip else x[:, :half]
        return torch.where(checkerboard_mask(x, self.flip), 0.0, x)

    def _conditioner_output(self, x_a: Tensor, cond: Tensor | None, x: Tensor) -> Tensor:
        """``h = NN(x_a)``: ``[B, k·C', ...]`` with ``k = 2`` (affine) or 1 (additive), in ``x``'s dtype."""
        h = self.conditioner(x_a) if cond is None else self.conditioner(x_a, cond)
        expected = (x.shape[0], self._out_channels, *x.shape[2:])
        if not isinstance(h, Tensor) or tuple(h.shape) != expected:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"conditioner output must have shape {expected}, got {got}")
        # Under autocast the conditioner computes in bf16/fp16 while the flow's state x keeps its dtype: the
        # invertible part stays exact to x's precision, the conditioner's FLOPs run in the low one.
        return h if h.dtype == x.dtype else h.to(x.dtype)

    def rebuild_backward(self, y: Tensor, cond: Tensor | None, grad_y: Tensor, grad_logdet: Tensor | None,
                         params: list[Tensor], cond_needs_grad: bool):
        """The memory-saving backward of this layer from its output (``fastflow.nn.memory``), with one conditioner
        pass: ``(x, ∂L/∂x, [∂L/∂p for p in params], ∂L/∂cond or None)``.

        The inverse needs ``h = NN(x_a)`` and ``x_a`` is ``y_a``: the conditioner runs once, recording its graph
        from a leaf holding ``x_a``, the inverse rebuilds ``x_b`` from that ``h``, and the coupling itself (a
        pointwise pass) is re-run on the rebuilt ``x`` with the same ``h`` for the backward. The gradient that
        reaches the conditioner's input leaf then joins ``∂L/∂x`` through the split. The values are those of
        rebuilding ``x`` and re-running the whole layer, without the conditioner's second forward.
        """
        self._check_input(y, "y")
        with torch.no_grad():
            x_a = self._conditioner_input(y)
        x_a = x_a.detach().requires_grad_(True)
        with torch.enable_grad():
            h = self._conditioner_output(x_a, cond, y)
        with torch.no_grad():
            x, _ = self._transform(y, h.detach(), inverse=not self.forward_is_inverse)
        # The op's own backward on the rebuilt input where the layer has one (no second coupling pass).
        found = self._transform_backward(x, y, h.detach(), grad_y, grad_logdet)
        if found is not None:
            grad_x, grad_h = found
            inputs = [x_a, *params] + ([cond] if cond_needs_grad else [])
            grads = vjp([(h, grad_h)], inputs)
            if grads[0] is not None:
                grad_x = self._conditioner_input_backward(grad_x, grads[0])
            return x, grad_x, list(grads[1 : 1 + len(params)]), grads[-1] if cond_needs_grad else None
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y_again, logdet = self._transform(x, h, inverse=self.forward_is_inverse)
            inputs = [x, x_a, *params] + ([cond] if cond_needs_grad else [])
            found = vjp([(y_again, grad_y), (logdet, grad_logdet)], inputs)
        grad_x = found[0] if found[0] is not None else torch.zeros_like(x)
        if found[1] is not None:
            grad_x = self._conditioner_input_backward(grad_x, found[1])
        return x.detach(), grad_x, list(found[2 : 2 + len(params)]), found[-1] if cond_needs_grad else None

    def _transform_backward(self, x: Tensor, y: Tensor, h: Tensor, grad_y: Tensor,
                            grad_logdet: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``(∂L/∂x, ∂L/∂h)`` of the layer's forward ``x → y`` given ``h``, from the op's backward called directly;
        None where the layer has none (the caller then differentiates a re-run of :meth:`_transform`)."""
        return None

    def _conditioner_input_backward(self, grad_x: Tensor, grad_x_a: Tensor) -> Tensor:
        """``grad_x`` plus the gradient ``grad_x_a`` of :meth:`_conditioner_input`'s output taken back through it
        (into the pass-through channels, or the positions the checkerboard keeps)."""
        if self.mask == "channel":
            half = self.num_channels // 2
            grad_x = grad_x.clone()
            (grad_x[:, half:] if self.flip else grad_x[:, :half]).add_(grad_x_a.to(grad_x.dtype))
            return grad_x
        return torch.where(checkerboard_mask(grad_x, self.flip), grad_x, grad_x + grad_x_a.to(grad_x.dtype))


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

    def _transform(self, x: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return ops.affine_coupling(
            x, h[:, 1::2], h[:, 0::2], mask=self.mask, scale=self.scale, flip=self.flip, inverse=inverse,
            clamp=self.clamp,
        )

    def _transform_backward(self, x: Tensor, y: Tensor, h: Tensor, grad_y: Tensor,
                            grad_logdet: Tensor | None) -> tuple[Tensor, Tensor] | None:
        # The kernel's z: the op's input in the forward direction, its output where the layer's forward is the
        # op's inverse (Split).
        inverse = self.forward_is_inverse
        found = ops.coupling.affine_coupling_backward(
            y if inverse else x, h[:, 1::2], grad_y, grad_logdet, mask=self.mask, scale=self.scale, flip=self.flip,
            inverse=inverse, clamp=self.clamp,
        )
        if found is None:
            return None
        grad_x, grad_raw, grad_shift = found
        # h interleaves (h_t, h_s) channel by channel: h_t = h[:, 0::2], h_s = h[:, 1::2].
        return grad_x, torch.stack((grad_shift, grad_raw), dim=2).flatten(1, 2)



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

    def _transform(self, x: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return ops.additive_coupling(x, h, mask=self.mask, flip=self.flip, inverse=inverse)

    def _transform_backward(self, x: Tensor, y: Tensor, h: Tensor, grad_y: Tensor,
                            grad_logdet: Tensor | None) -> tuple[Tensor, Tensor] | None:
        return ops.coupling.additive_coupling_backward(grad_y, mask=self.mask, flip=self.flip,
                                                       inverse=self.forward_is_inverse)

