"""Backpropagation whose memory does not grow with depth: a flow's inputs are rebuilt from its outputs.

A chain of invertible layers need not store its activations. ``InvertibleSequential(..., memory_efficient=True)``
runs the forward pass without recording a graph and keeps only the chain's output ``y``. The backward pass walks
the layers from the last to the first: it rebuilds the layer's input ``x_k = f_k⁻¹(y_k)`` through the inverse,
re-runs ``f_k`` on it with a graph, back-propagates ``∂L/∂y_k`` and ``∂L/∂log|det J|`` through that one layer, and
frees the graph before moving on (after RevNet, Gomez et al. 2017, and i-RevNet). The peak memory of a training
step is then that of one layer's graph, whatever the depth; the price is one inverse and one extra forward per
layer in the backward.

The rebuilt inputs carry the floating-point error of the inverse; for well-conditioned flows (Glow's
initialisation, the ``sigmoid(h + 2)`` scale) it stays far below the gradient's own noise.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from fastflow._checks import check_floating
from fastflow.nn.container import FlowSequential
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["InvertibleSequential"]


class _RebuildFromOutput(torch.autograd.Function):
    """``(y, logdet) = chain(x)`` storing only ``y``; gradients for ``x``, ``cond`` and every parameter."""

    @staticmethod
    def forward(ctx, chain: InvertibleSequential, cond: Tensor | None, x: Tensor, *params: Tensor):
        y, logdet = FlowSequential.forward(chain, x, cond)
        if not isinstance(logdet, Tensor):  # a chain of no layers
            logdet = torch.zeros(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)
        # Fresh outputs: a view of x (or an expanded log-determinant) must not leave this Function as a view.
        y = y.clone() if y is x or y._base is not None else y
        ctx.chain, ctx.cond, ctx.params = chain, cond, params
        # The backward re-runs the layers: under the forward's autocast, or they would compute in another dtype.
        ctx.autocast = [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                        if torch.is_autocast_enabled(device)]
        ctx.save_for_backward(y)
        return y, logdet.contiguous()

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_logdet: Tensor | None):
        (y,) = ctx.saved_tensors
        chain, cond, params = ctx.chain, ctx.cond, ctx.params
        index = {id(p): i for i, p in enumerate(params)}
        grad_params: list[Tensor | None] = [None] * len(params)
        grad_cond = None
        cond_needs_grad = cond is not None and cond.requires_grad
        y = y.detach()
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        for layer in reversed(chain):
            with torch.no_grad(), contextlib.ExitStack() as autocast:
                for device, dtype in ctx.autocast:
                    autocast.enter_context(torch.autocast(device, dtype=dtype))
                x, _ = layer.inverse(y, cond)
            with torch.enable_grad(), contextlib.ExitStack() as autocast:
                for device, dtype in ctx.autocast:
                    autocast.enter_context(torch.autocast(device, dtype=dtype))
                x = x.detach().requires_grad_(True)
                y_again, logdet = layer(x, cond)
                layer_params = [p for p in layer.parameters() if id(p) in index]
                inputs = [x, *layer_params] + ([cond] if cond_needs_grad else [])
                outputs, grads = [y_again], [grad_y]
                if grad_logdet is not None and isinstance(logdet, Tensor) and logdet.requires_grad:
                    outputs.append(logdet)
                    grads.append(grad_logdet.to(logdet.dtype).expand_as(logdet))
                found = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
            grad_y = found[0] if found[0] is not None else torch.zeros_like(x)
            for p, g in zip(layer_params, found[1 : 1 + len(layer_params)], strict=True):
                if g is not None:
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            if cond_needs_grad and found[-1] is not None:
                grad_cond = found[-1] if grad_cond is None else grad_cond + found[-1]
            y = x.detach()
        return (None, grad_cond, grad_y, *grad_params)


class InvertibleSequential(FlowSequential):
    """``f = f_K ∘ … ∘ f_1`` like :class:`FlowSequential`; ``memory_efficient=True`` stores no activations.

    With ``memory_efficient=True`` a differentiable call keeps only the output and rebuilds every layer's input
    through its inverse in the backward pass (see the module docstring): peak memory is that of one layer,
    whatever ``K``. Every layer must have ``forward(x, cond=None) -> (y, logdet)`` and an exact
    ``inverse(y, cond=None)``. Calls without gradients (evaluation, sampling) run the layers directly.

    Example:
        >>> from fastflow.nn import AffineCoupling
        >>> flow = InvertibleSequential(*[AffineCoupling(4, hidden_channels=8, flip=k % 2 == 1) for k in range(8)])
        >>> z, logdet = flow(torch.randn(2, 4, 6, 6))   # backward rebuilds the 8 layers' inputs one by one
    """

    def __init__(self, *layers: nn.Module, memory_efficient: bool = True):
        super().__init__(*layers)
        self.memory_efficient = memory_efficient

    def extra_repr(self) -> str:
        return f"memory_efficient={self.memory_efficient}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_floating("x", x)
        params = tuple(p for p in self.parameters() if p.requires_grad)
        wants_grad = x.requires_grad or bool(params) or (cond is not None and cond.requires_grad)
        if not (self.memory_efficient and torch.is_grad_enabled() and wants_grad):
            return super().forward(x, cond)
        return _RebuildFromOutput.apply(self, cond, x, *params)
