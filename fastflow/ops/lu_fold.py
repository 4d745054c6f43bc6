"""The folded ``C×C`` weight of ActNorm + the LU 1×1 convolution and its log-determinant, as one autograd node.

``W' = P·L·(U + diag(sign_s·exp(log_s)))·diag(exp(log_scale))``, ``b' = P·L·(U + diag(…))·bias`` and
``logdet = H·W·(Σ log_scale + Σ log_s)`` (``[B]``) are what ``fastflow.reference.actnorm_invconv.folded_weight``
and ``logdet`` compute; recorded op by op, they are some fifteen tiny autograd nodes per flow step, forward and
backward, which on a CPU cost more in dispatch than the arithmetic (a Glow with 48 steps pays them 48 times a
step, and the memory-saving backward pays them again in its walk). Here the forward is the same algebra without
a graph and :func:`fold_backward` is its vector-Jacobian product written out:

- ``W_lu = P·A`` with ``A = L_unit·U'``: ``∂A = Pᵀ·∂W_lu``; ``∂L = tril(∂A·U'ᵀ, −1)``, ``∂U' = triu(L_unitᵀ·∂A)``,
  of which the strict upper part is ``∂upper`` and the diagonal times ``sign_s·exp(log_s)`` is ``∂log_s``;
- ``W' = W_lu·diag(e)``, ``e = exp(log_scale)``, ``b' = W_lu·bias``: ``∂W_lu = ∂W'·diag(e) + ∂b'·biasᵀ``,
  ``∂log_scale_j = Σ_i ∂W'_ij·W'_ij``, ``∂bias = W_luᵀ·∂b'``;
- the log-determinant adds ``H·W·Σ_b ∂logdet_b`` to ``∂log_scale`` and ``∂log_s``.

The gradients equal autograd's through the reference algebra up to float rounding (``tests/test_lu_fold.py``).
The forward direction only: the inverse (sampling, the memory-saving walk's rebuild) has no gradient to take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow.reference import actnorm_invconv as reference

__all__ = ["fold", "fold_backward", "folded_weight_and_logdet"]


def fold(log_scale: Tensor | None, bias: Tensor | None, lower: Tensor, upper: Tensor, log_s: Tensor, perm: Tensor,
         sign_s: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(W' [C, C], b' [C], W_lu, L_unit, U')`` in ``dtype``, without autograd (the last three for the backward)."""
    with torch.no_grad():
        # The reference's pieces (lu_weight is their product), kept for the backward.
        l_unit = reference.unit_lower(lower.to(dtype))
        u_prime = reference.upper_with_diagonal(upper.to(dtype), log_s.to(dtype), sign_s)
        w_lu = (l_unit @ u_prime)[perm]
        weight = w_lu if log_scale is None else w_lu * torch.exp(log_scale.to(dtype))[None, :]
        shift = w_lu.new_zeros(w_lu.shape[0]) if bias is None else w_lu @ bias.to(dtype)
    return weight, shift, w_lu, l_unit, u_prime


def fold_backward(grad_weight: Tensor | None, grad_shift: Tensor | None, grad_logdet: Tensor | None, pixels: int,
                  weight: Tensor, w_lu: Tensor, l_unit: Tensor, u_prime: Tensor, perm: Tensor,
                  log_scale: Tensor | None, bias: Tensor | None) -> tuple[Tensor | None, ...]:
    """``(∂log_scale, ∂bias, ∂lower, ∂upper, ∂log_s)`` from the gradients of ``W'``, ``b'`` and the log-determinant
    (``[B]``; any of the three may be None), in the dtype of the fold (``None`` for an absent ``log_scale``/``bias``).
    """
    dtype = w_lu.dtype
    grad_weight = torch.zeros_like(w_lu) if grad_weight is None else grad_weight.to(dtype)
    grad_w_lu = grad_weight if log_scale is None else grad_weight * torch.exp(log_scale.to(dtype))[None, :]
    grad_bias = None
    if bias is not None and grad_shift is not None:
        grad_shift = grad_shift.to(dtype)
        grad_w_lu = grad_w_lu + torch.outer(grad_shift, bias.to(dtype))
        grad_bias = w_lu.t() @ grad_shift
    grad_a = torch.empty_like(grad_w_lu)
    grad_a[perm] = grad_w_lu  # W_lu = A[perm]: each row of A is one row of W_lu
    grad_lower = torch.tril(grad_a @ u_prime.t(), -1)
    grad_u = l_unit.t() @ grad_a
    grad_upper = torch.triu(grad_u, 1)
    grad_log_s = grad_u.diagonal() * u_prime.diagonal()  # ∂/∂log_s of sign·exp(log_s) is that same diagonal
    grad_log_scale = None if log_scale is None else (grad_weight * weight).sum(0)
    if grad_logdet is not None:
        total = pixels * grad_logdet.to(dtype).sum()
        grad_log_s = grad_log_s + total
        grad_log_scale = None if grad_log_scale is None else grad_log_scale + total
    return grad_log_scale, grad_bias, grad_lower, grad_upper, grad_log_s


class _Fold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_scale, bias, lower, upper, log_s, perm, sign_s, dtype, batch, pixels):
        weight, shift, w_lu, l_unit, u_prime = fold(log_scale, bias, lower, upper, log_s, perm, sign_s, dtype)
        logdet = reference.logdet(log_scale, log_s, batch, pixels, dtype)
        ctx.save_for_backward(weight, w_lu, l_unit, u_prime, perm, sign_s, log_scale, bias, lower, upper, log_s)
        ctx.sizes = (dtype, batch, pixels)
        return weight, shift, logdet

    @staticmethod
    def backward(ctx, grad_weight, grad_shift, grad_logdet):
        weight, w_lu, l_unit, u_prime, perm, sign_s, log_scale, bias, lower, upper, log_s = ctx.saved_tensors
        inputs = (log_scale, bias, lower, upper, log_s)
        dtype, batch, pixels = ctx.sizes
        if torch.is_grad_enabled():
            # create_graph=True (a double backward): the written-out product would hide its own dependence on the
            # parameters, so differentiate the reference algebra re-run from them instead.
            grads = _reference_backward(inputs, perm, sign_s, dtype, batch, pixels,
                                        (grad_weight, grad_shift, grad_logdet), ctx.needs_input_grad[:5])
        else:
            grads = fold_backward(grad_weight, grad_shift, grad_logdet, pixels, weight, w_lu, l_unit, u_prime,
                                  perm, log_scale, bias)
        cast = [None if g is None or t is None else g.to(t.dtype) for g, t in zip(grads, inputs, strict=True)]
        return (*cast, None, None, None, None, None)


def _reference_backward(inputs, perm, sign_s, dtype, batch, pixels, grads, needed):
    log_scale, bias, lower, upper, log_s = inputs
    with torch.enable_grad():
        weight, shift = reference.folded_weight(log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s,
                                                dtype=dtype)
        logdet = reference.logdet(log_scale, log_s, batch, pixels, dtype)
        wanted = [t for t, need in zip(inputs, needed, strict=True) if t is not None and need]
        found = iter(torch.autograd.grad((weight, shift, logdet), wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(found) if t is not None and need else None for t, need in zip(inputs, needed, strict=True))


def folded_weight_and_logdet(log_scale: Tensor | None, bias: Tensor | None, lower: Tensor, upper: Tensor,
                             log_s: Tensor, *, perm: Tensor, sign_s: Tensor, dtype: torch.dtype, batch: int,
                             pixels: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(W' [C, C], b' [C], logdet [B])`` of the forward direction in ``dtype``, one autograd node."""
    return _Fold.apply(log_scale, bias, lower, upper, log_s, perm, sign_s, dtype, batch, pixels)
