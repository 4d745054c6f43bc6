"""One vector-Jacobian product over a recorded graph, for the backward walks that run autograd piece by piece
(the memory-saving backward of ``fastflow.nn.memory`` and the layers' ``rebuild_backward``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["vjp"]


def vjp(pairs: Sequence[tuple[object, Tensor | None]], inputs: Sequence[Tensor]) -> list[Tensor | None]:
    """``∂(Σ ⟨output, grad⟩)/∂input`` for each of ``inputs`` (None where an input is not reached).

    ``pairs``: ``(output, grad)``; a pair whose grad is None, or whose output is not a tensor that requires grad
    (an additive coupling's constant log-determinant), takes no part. A grad is cast to its output's dtype and
    broadcast to its shape (a ``[B]`` log-determinant gradient against an expanded log-determinant).
    """
    outputs, grads = [], []
    for output, grad in pairs:
        if grad is not None and isinstance(output, Tensor) and output.requires_grad:
            outputs.append(output)
            grads.append(grad.to(output.dtype).expand_as(output))
    if not (outputs and inputs):
        return [None] * len(inputs)
    return list(torch.autograd.grad(outputs, list(inputs), grads, allow_unused=True))
