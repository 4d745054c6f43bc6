"""Reference ActNorm + invertible 1×1 convolution (Glow) with an LU-parametrised weight, in plain PyTorch.

The weight is ``W = P·L·(U + diag(s))``: ``P`` a fixed permutation (``(P·v)_i = v[perm[i]]``), ``L`` unit
lower-triangular (its strictly lower part is the parameter ``lower``), ``U`` strictly upper-triangular
(``upper``) and ``s = sign_s·exp(log_s)``. ActNorm ``a(x) = exp(log_scale) ⊙ x + bias`` runs first:

    forward:  y = W·(exp(log_scale) ⊙ x + bias)             at every pixel of ``x [B, C, H, W]``
    inverse:  x = exp(−log_scale) ⊙ (W⁻¹·y − bias)
    log|det J| = ±H·W·(Σ log_scale + Σ log|s|)              per example, no ``slogdet``

``W⁻¹ = (U + diag s)⁻¹·L⁻¹·Pᵀ`` comes from two triangular solves of ``C×C`` matrices, never a general
inverse. The fused op folds ActNorm into the convolution, ``y = W'·x + b'`` with ``W' = W·diag(exp(log_scale))``
and ``b' = W·bias`` (inverse: ``W' = diag(exp(−log_scale))·W⁻¹``, ``b' = −exp(−log_scale) ⊙ bias``), so that one
pass over the pixels does both: :func:`folded_weight` gives ``(W', b')`` and :func:`channel_mix` applies them.

:func:`actnorm_invconv` is written the way a user would write it (ActNorm, then ``conv2d``): the specification
and the benchmarks' baseline. Pixel math runs in the input dtype; the log-determinant and the ``C×C`` algebra
run in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.reference.numerics import accumulation_dtype

__all__ = [
    "actnorm_invconv",
    "channel_mix",
    "channel_mix_backward",
    "folded_weight",
    "logdet",
    "lu_inverse_weight",
    "lu_weight",
    "unit_lower",
    "upper_with_diagonal",
]


def unit_lower(lower: Tensor) -> Tensor:
    """``L``: the strictly lower triangle of ``lower`` with a unit diagonal."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    return torch.tril(lower, -1) + eye


def upper_with_diagonal(upper: Tensor, log_s: Tensor, sign_s: Tensor) -> Tensor:
    """``U + diag(sign_s·exp(log_s))``: the strictly upper triangle of ``upper`` with that diagonal."""
    return torch.triu(upper, 1) + torch.diag(sign_s.to(log_s.dtype) * torch.exp(log_s))


def lu_weight(lower: Tensor, upper: Tensor, log_s: Tensor, *, perm: Tensor, sign_s: Tensor) -> Tensor:
    """``W = P·L·(U + diag(sign_s·exp(log_s)))``, ``[C, C]``, from ``lower``, ``upper`` and ``log_s [C]``."""
    lu = unit_lower(lower) @ upper_with_diagonal(upper, log_s, sign_s)
    return lu[perm]


def lu_inverse_weight(lower: Tensor, upper: Tensor, log_s: Tensor, *, perm: Tensor, sign_s: Tensor) -> Tensor:
    """``W⁻¹ = (U + diag s)⁻¹·L⁻¹·Pᵀ``, ``[C, C]``, by two triangular solves (no general inverse)."""
    channels = log_s.shape[0]
    # Pᵀ: column perm[i] of the identity becomes column i, i.e. Pᵀ[perm[i], i] = 1.
    p_transposed = torch.eye(channels, dtype=log_s.dtype, device=log_s.device)[perm].t()
    l_inv_pt = torch.linalg.solve_triangular(unit_lower(lower), p_transposed, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(upper_with_diagonal(upper, log_s, sign_s), l_inv_pt, upper=True)


def logdet(
    log_scale: Tensor | None, log_s: Tensor, batch: int, pixels: int, dtype: torch.dtype, inverse: bool = False
) -> Tensor:
    """``±H·W·(Σ log_scale + Σ log|s|)`` as ``[B]`` (an expanded view) in ``dtype``; no host synchronisation."""
    total = log_s.to(dtype).sum()
    if log_scale is not None:
        total = total + log_scale.to(dtype).sum()
    total = total * (-pixels if inverse else pixels)
    return total.expand(batch)


def folded_weight(
    log_scale: Tensor | None,
    bias: Tensor | None,
    lower: Tensor,
    upper: Tensor,
    log_s: Tensor,
    *,
    perm: Tensor,
    sign_s: Tensor,
    inverse: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``(W' [C, C], b' [C])`` in ``dtype`` such that the step is ``y = W'·x + b'`` at every pixel.

    ``log_scale``/``bias`` ``None`` mean no ActNorm (the plain LU 1×1 convolution).
    """
    channels = log_s.shape[0]
    lower, upper, log_s = lower.to(dtype), upper.to(dtype), log_s.to(dtype)
    log_scale = log_s.new_zeros(channels) if log_scale is None else log_scale.to(dtype)
    bias = log_s.new_zeros(channels) if bias is None else bias.to(dtype)
    if inverse:
        inv_scale = torch.exp(-log_scale)
        w_inv = lu_inverse_weight(lower, upper, log_s, perm=perm, sign_s=sign_s)
        return inv_scale[:, None] * w_inv, -inv_scale * bias
    w = lu_weight(lower, upper, log_s, perm=perm, sign_s=sign_s)
    return w * torch.exp(log_scale)[None, :], w @ bias


def channel_mix(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``y[b, :, h, w] = weight·x[b, :, h, w] + bias``: ``x [B, C, H, W]``, ``weight [C, C]``, ``bias [C]``.

    Runs in the dtype of ``x`` (``weight`` and ``bias`` are cast to it), as a user's ``conv2d`` would.
    """
    return F.conv2d(x, weight.to(x.dtype)[:, :, None, None], bias.to(x.dtype))


def channel_mix_backward(grad_y: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`channel_mix`: ``(Wᵀ·g [B, C, H, W], Σ g·xᵀ [C, C], Σ g [C])``.

    The sums run over the batch and the pixels; ``grad_weight`` and ``grad_bias`` are in the dtype of
    ``weight``, ``grad_x`` in that of ``x``.
    """
    acc = weight.dtype
    g = grad_y.to(acc).flatten(2)  # [B, C, HW]
    grad_x = torch.einsum("oc,bop->bcp", weight, g).reshape(x.shape).to(x.dtype)
    grad_weight = torch.einsum("bop,bcp->oc", g, x.to(acc).flatten(2))
    return grad_x, grad_weight, g.sum(dim=(0, 2))


def actnorm_invconv(
    x: Tensor,
    log_scale: Tensor | None,
    bias: Tensor | None,
    lower: Tensor,
    upper: Tensor,
    log_s: Tensor,
    *,
    perm: Tensor,
    sign_s: Tensor,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """ActNorm then the LU 1×1 convolution (or the inverse of both), unfused: ``(y [B, C, H, W], logdet [B])``."""
    acc = accumulation_dtype(x.dtype)
    channels = x.shape[1]
    view = (1, channels, 1, 1)
    scale = None if log_scale is None else log_scale.to(acc).view(view)
    shift = None if bias is None else bias.to(acc).view(view)
    params = dict(perm=perm, sign_s=sign_s)
    lower, upper, log_s_acc = lower.to(acc), upper.to(acc), log_s.to(acc)
    if inverse:
        w_inv = lu_inverse_weight(lower, upper, log_s_acc, **params)
        h = F.conv2d(x, w_inv.to(x.dtype)[:, :, None, None])
        if shift is not None:
            h = h - shift.to(x.dtype)
        if scale is not None:
            h = h * torch.exp(-scale).to(x.dtype)
        y = h
    else:
        h = x
        if scale is not None:
            h = h * torch.exp(scale).to(x.dtype)
        if shift is not None:
            h = h + shift.to(x.dtype)
        w = lu_weight(lower, upper, log_s_acc, **params)
        y = F.conv2d(h, w.to(x.dtype)[:, :, None, None])
    pixels = x.shape[2] * x.shape[3]
    return y, logdet(log_scale, log_s, x.shape[0], pixels, acc, inverse)
