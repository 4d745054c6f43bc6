"""Glow's flow step: ActNorm → invertible 1×1 convolution → coupling.

With the LU 1×1 convolution, ActNorm is folded into it and both run as one fused pass
(``fastflow.ops.actnorm_invconv``); ActNorm's data-dependent initialisation still sees the step's input. When
something observes ActNorm or InvConv1x1 — a hook on either, or a global module hook — the step calls them one
after the other through their public calls instead, so that every hook sees exactly the tensors of an unfused
step (the result is the same up to rounding).
"""

from __future__ import annotations

from torch import Tensor, nn

from fastflow.nn._hooks import observed as _observed
from fastflow.nn.actnorm import ActNorm
from fastflow.nn.coupling import AdditiveCoupling, AffineCoupling
from fastflow.nn.invconv import InvConv1x1
from fastflow.ops.actnorm_invconv import actnorm_invconv_rebuild_backward

__all__ = ["FlowStep"]


class FlowStep(nn.Module):
    """One step of Glow on ``[B, C, H, W]``: ``forward(x) -> (y, logdet [B])``, ``inverse(y) -> (x, logdet)``.

    Args:
        num_channels: ``C`` (even: the coupling splits channels in halves).
        hidden_channels: width of the coupling's conditioner.
        coupling: ``"affine"`` (Glow, ``sigmoid(h + 2)`` scale) or ``"additive"`` (NICE-style).
        lu: LU-parametrised 1×1 convolution (fused with ActNorm), or a plain weight.
        cond_channels: channels of ``cond`` for a conditional coupling.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        hidden_channels: int = 512,
        coupling: str = "affine",
        lu: bool = True,
        scale: str = "sigmoid",
        cond_channels: int = 0,
    ):
        super().__init__()
        if coupling not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {coupling!r}")
        self.actnorm = ActNorm(num_channels)
        self.invconv = InvConv1x1(num_channels, lu=lu)
        if coupling == "affine":
            self.coupling = AffineCoupling(
                num_channels, hidden_channels=hidden_channels, scale=scale, cond_channels=cond_channels
            )
        else:
            self.coupling = AdditiveCoupling(num_channels, hidden_channels=hidden_channels, cond_channels=cond_channels)

    def _fused(self) -> bool:
        """Whether ActNorm and the 1×1 convolution may run as one fused pass: LU weight, and no hook to feed."""
        return self.invconv.lu and not (_observed(self.actnorm) or _observed(self.invconv))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._fused():
            self.actnorm._check(x)
            if self.actnorm.needs_init:
                self.actnorm.initialize(x)
            y, logdet = self.invconv._lu_call(x, self.actnorm.log_scale, self.actnorm.bias, inverse=False)
        else:
            y, logdet = self.actnorm(x)
            y, logdet_w = self.invconv(y)
            logdet = logdet + logdet_w
        y, logdet_c = self.coupling(y, cond)
        return y, logdet + logdet_c

    def invertible_parts(self) -> list:
        """The step as the chain of its parts, each with ``forward``/``inverse``/``parameters``, for the
        memory-saving backward (``fastflow.nn.memory``), which walks them one by one so that the coupling can
        rebuild its input with a single conditioner pass. The step itself when a hook on it must see it run."""
        if _observed(self):
            return [self]
        first = [_FusedActNormInvConv(self)] if self._fused() else [self.actnorm, self.invconv]
        return [*first, self.coupling]

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.coupling.inverse(y, cond)
        if self._fused():
            x, logdet_w = self.invconv._lu_call(x, self.actnorm.log_scale, self.actnorm.bias, inverse=True)
        else:
            x, logdet_w = self.invconv.inverse(x)
            x, logdet_a = self.actnorm.inverse(x)
            logdet_w = logdet_w + logdet_a
        return x, logdet + logdet_w


class _FusedActNormInvConv:
    """ActNorm and the LU 1×1 convolution of ``step`` as the one fused op its forward runs (ActNorm initialised)."""

    def __init__(self, step: FlowStep):
        self.step = step

    def parameters(self):
        yield from self.step.actnorm.parameters()
        yield from self.step.invconv.parameters()

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        step = self.step
        return step.invconv._lu_call(x, step.actnorm.log_scale, step.actnorm.bias, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        step = self.step
        return step.invconv._lu_call(y, step.actnorm.log_scale, step.actnorm.bias, inverse=True)

    def rebuild_backward(self, y: Tensor, cond: Tensor | None, grad_y: Tensor, grad_logdet: Tensor | None,
                         params: list[Tensor], cond_needs_grad: bool):
        """The memory-saving backward's walk through this part (``fastflow.nn.memory``) without re-running its
        forward pass: ``actnorm_invconv_rebuild_backward``; None under the plain reference."""
        step, invconv = self.step, self.step.invconv
        found = actnorm_invconv_rebuild_backward(
            y, step.actnorm.log_scale, step.actnorm.bias, invconv.lower, invconv.upper, invconv.log_s,
            perm=invconv.perm, sign_s=invconv.sign_s, grad_y=grad_y, grad_logdet=grad_logdet, params=params,
        )
        if found is None:
            return None
        x, grad_x, grads = found
        return x, grad_x, grads, None
