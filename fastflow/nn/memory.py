"""Backpropagation whose memory does not grow with depth: a flow's inputs are rebuilt from its outputs.

A chain of invertible layers need not store its activations. ``InvertibleSequential(..., memory_efficient=True)``
runs the forward pass without recording a graph and keeps only the chain's output ``y``. The backward pass walks
the layers from the last to the first: it rebuilds the layer's input ``x_k = f_k⁻¹(y_k)`` through the inverse,
re-runs ``f_k`` on it with a graph, back-propagates ``∂L/∂y_k`` and ``∂L/∂log|det J|`` through that one layer, and
frees the graph before moving on (after RevNet, Gomez et al. 2017, and i-RevNet). The peak memory of a training
step is then that of one layer's graph, whatever the depth.

The price is one extra forward per layer, not two: a coupling's inverse needs its conditioner's output
``NN(x_a)`` on the pass-through half, which is the same in ``x`` and ``y``, so the coupling runs its conditioner
once in the backward, recording the graph, and re-runs only its pointwise part on the rebuilt input
(``rebuild_backward``). A Glow step is walked as its parts (``invertible_parts``: ActNorm with the 1×1
convolution, then the coupling), the cheap ones rebuilt and re-run as any layer is.

The rebuilt inputs carry the floating-point error of the inverse; for well-conditioned flows (Glow's
initialisation, the ``sigmoid(h + 2)`` scale) it stays far below the gradient's own noise.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from fastflow._autograd import vjp
from fastflow._checks import check_floating
from fastflow.nn.container import FlowSequential
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["InvertibleSequential"]


class _RebuildFromOutput(torch.autograd.Function):
    """``(y, logdet) = chain(x)`` storing only ``y``; gradients for ``x``, ``cond`` and every parameter."""

    @staticmethod
    def forward(ctx, chain: InvertibleSequential, cond: Tensor | None, bindings: list, x: Tensor, *params: Tensor):
        y, logdet = FlowSequential.forward(chain, x, cond)
        if not isinstance(logdet, Tensor):  # a chain of no layers
            logdet = torch.zeros(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)
        # Fresh outputs: a view of x (or an expanded log-determinant) must not leave this Function as a view.
        y = y.clone() if y is x or y._base is not None else y
        ctx.chain, ctx.cond, ctx.params = chain, cond, params
        # The tensors the layers held as parameters in this forward: under torch.func.functional_call they are the
        # caller's, swapped in for the call only, and the backward must re-run the layers with those.
        ctx.bindings = bindings
        # The backward re-runs the layers: under the forward's autocast, or they would compute in another dtype.
        ctx.autocast = [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                        if torch.is_autocast_enabled(device)]
        ctx.save_for_backward(y)
        return y, logdet.contiguous()

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_logdet: Tensor | None):
        (y,) = ctx.saved_tensors
        chain, cond, params = ctx.chain, ctx.cond, ctx.params
        y = y.detach()
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        with _bound(ctx.bindings):
            return _RebuildFromOutput._walk(ctx, chain, cond, params, y, grad_y, grad_logdet)

    @staticmethod
    def _walk(ctx, chain, cond, params, y, grad_y, grad_logdet):
        index = {id(p): i for i, p in enumerate(params)}
        grad_params: list[Tensor | None] = [None] * len(params)
        grad_cond = None
        cond_needs_grad = cond is not None and cond.requires_grad
        parts = [part for layer in chain for part in _parts(layer)]
        for part in reversed(parts):
            part_params = [p for p in part.parameters() if id(p) in index]
            with contextlib.ExitStack() as autocast:
                for device, dtype in ctx.autocast:
                    autocast.enter_context(torch.autocast(device, dtype=dtype))
                own = getattr(part, "rebuild_backward", None)
                args = (y, cond, grad_y, grad_logdet, part_params, cond_needs_grad)
                found = own(*args) if own is not None else None
                x, grad_y, grads, found_cond = found if found is not None else _rebuild_backward(part, *args)
            for p, g in zip(part_params, grads, strict=True):
                if g is not None:
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            if found_cond is not None:
                grad_cond = found_cond if grad_cond is None else grad_cond + found_cond
            y = x
        return (None, grad_cond, None, grad_y, *grad_params)


@contextlib.contextmanager
def _bound(bindings: list[tuple[nn.Module, str, Tensor]]):
    """The parameters of ``bindings`` in their modules for the duration (those that were swapped out since, as
    ``torch.func.functional_call`` does once its call returns), the modules' own afterwards."""
    swapped = [(module, name, module._parameters.get(name), p) for module, name, p in bindings
               if module._parameters.get(name) is not p]
    for module, name, _, p in swapped:
        module._parameters[name] = p
    try:
        yield
    finally:
        for module, name, current, _ in swapped:
            module._parameters[name] = current


def _parts(layer: nn.Module) -> list:
    """The pieces the backward walks for one layer of the chain: its ``invertible_parts()`` where it has them (a
    Glow step: ActNorm and the 1×1 convolution, then the coupling), else the layer itself."""
    parts = getattr(layer, "invertible_parts", None)
    return parts() if parts is not None else [layer]


def _rebuild_backward(layer, y: Tensor, cond: Tensor | None, grad_y: Tensor, grad_logdet: Tensor | None,
                      params: list[Tensor], cond_needs_grad: bool):
    """One layer of the backward walk, for any layer: rebuild its input through the inverse, run the layer again
    on it recording a graph, back-propagate through that graph. ``(x, ∂L/∂x, [∂L/∂p], ∂L/∂cond or None)``.

    A layer may do the same cheaper with a method ``rebuild_backward`` of this signature, returning None where it
    leaves the layer to this function (the couplings: their inverse already computes what the re-run forward
    needs; ActNorm + 1×1 convolution: the backward kernel runs on the rebuilt input without the forward's pass)."""
    with torch.no_grad():
        x, _ = layer.inverse(y, cond)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y_again, logdet = layer(x, cond)
        inputs = [x, *params] + ([cond] if cond_needs_grad else [])
        found = vjp([(y_again, grad_y), (logdet, grad_logdet)], inputs)
    grad_x = found[0] if found[0] is not None else torch.zeros_like(x)
    return x.detach(), grad_x, list(found[1 : 1 + len(params)]), found[-1] if cond_needs_grad else None


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
        # (module, name, tensor) of every parameter, and those that require grad once each (self.parameters()'s
        # order): one walk over the modules for both.
        bindings = [(module, name, p) for module in self.modules() for name, p in module._parameters.items()
                    if p is not None]
        params = tuple({id(p): p for _, _, p in bindings if p.requires_grad}.values())
        wants_grad = x.requires_grad or bool(params) or (cond is not None and cond.requires_grad)
        if not (self.memory_efficient and torch.is_grad_enabled() and wants_grad):
            return super().forward(x, cond)
        return _RebuildFromOutput.apply(self, cond, bindings, x, *params)
