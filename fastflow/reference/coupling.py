"""Reference coupling layers (NICE additive, RealNVP/Glow affine) in plain PyTorch.

A coupling splits ``x`` by a binary mask into a pass-through part ``x_a`` and a transformed part ``x_b``;
a conditioner computes ``(h_s, h_t)`` from ``x_a`` and

    forward:  y_b = x_b · s(h_s) + h_t,   log|det J| = Σ log s(h_s)
    inverse:  x_b = (y_b − h_t) / s(h_s), log|det J| = −Σ log s(h_s)

with ``s(h) = sigmoid(h + 2)`` (Glow) or ``s(h) = exp(c · tanh(h / c))`` (RealNVP, a soft clamp of the
log-scale at ±c), and ``s = 1`` for the additive coupling of NICE. Masks:

- ``"channel"``: the halves of dimension 1 (channels of ``[B, C, H, W]``, features of ``[B, D]``);
  ``flip=False`` transforms the second half. ``h_s`` and ``h_t`` cover the transformed half only.
- ``"checkerboard"``: spatial parity ``(i + j) mod 2`` of ``[B, C, H, W]`` (index parity ``d mod 2`` of
  ``[B, D]``); ``flip=False`` transforms the odd positions. ``h_s`` and ``h_t`` cover the whole input and
  their pass-through positions are ignored.

This is written the way a user would write it (``chunk``/``cat``, several passes), and as fast as the
plainest such version: it is also the eager baseline the benchmarks compare against (``bench_coupling.py``
times it beside that plain version). So the coupling computes ``s`` directly (``sigmoid(h + 2)``, or
``exp(c·tanh(h/c))``), ``log s`` as ``log(s)``, and the inverse as ``(y_b − h_t)/s``: one elementwise pass
each, where an ``exp`` of a ``logsigmoid`` costs two (and PyTorch's CPU ``logsigmoid`` alone costs about four
sigmoids). That is exact to the rounding of ``s``: ``s`` has a relative error of a few ulp, so ``log s`` is
within a few ``eps`` of the exact value (absolute, which is what the sum ``Σ log s`` sees; relative where
``|log s| ≥ 1``) — wherever ``s`` is a normal number, i.e.
``h + 2 > log(finfo.tiny)`` (about −87 in float32 and bfloat16, −708 in float64, −9.7 in float16); below,
``s`` underflows and ``log s`` goes to −∞ (a scale under ``1e-38`` is no longer an invertible map in float32
anyway). :func:`log_scale` and :func:`log_scale_derivative`, the specification the kernels are tested
against, stay exact over the whole range. Computation runs in the input dtype, the log-determinant is
accumulated in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastflow.reference.numerics import accumulation_dtype

#: Soft clamp ``c`` of RealNVP's log-scale, ``log s = c · tanh(h / c)``.
CLAMP = 2.0

MASKS = ("channel", "checkerboard")
SCALES = ("sigmoid", "exp")


def log_scale(raw_scale: torch.Tensor, scale: str = "sigmoid", clamp: float = CLAMP) -> torch.Tensor:
    """``log s(h_s)`` elementwise: ``log sigmoid(h + 2)`` or ``c · tanh(h / c)``."""
    if scale == "sigmoid":
        return F.logsigmoid(raw_scale + 2.0)
    if scale == "exp":
        return clamp * torch.tanh(raw_scale / clamp)
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def log_scale_derivative(raw_scale: torch.Tensor, scale: str = "sigmoid", clamp: float = CLAMP) -> torch.Tensor:
    """``∂ log s / ∂h_s`` elementwise: ``1 − sigmoid(h + 2) = sigmoid(−(h + 2))`` or ``1 − tanh²(h/c) = 1/cosh²(h/c)``.

    Both forms avoid the cancellation of ``1 − (something near 1)``: ``1 − tanh²`` is 0 from ``|h/c| ≈ 9``
    (float32) on while ``1/cosh²`` keeps its digits until it underflows.
    """
    if scale == "sigmoid":
        return torch.sigmoid(-(raw_scale + 2.0))
    if scale == "exp":
        return torch.cosh(raw_scale / clamp).square().reciprocal()
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def checkerboard_mask(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Boolean mask of the transformed positions, broadcastable to ``x`` (``[H, W]`` or ``[D]``)."""
    if x.dim() == 2:
        parity = torch.arange(x.shape[1], device=x.device) % 2
    else:
        rows = torch.arange(x.shape[2], device=x.device)
        cols = torch.arange(x.shape[3], device=x.device)
        parity = (rows[:, None] + cols[None, :]) % 2
    return parity == (0 if flip else 1)


def _scale(raw_scale, scale, clamp):
    """``(s, log s)`` as a user computes them (see the module docstring); ``log s`` is None where it is
    ``log(s)``, which the caller takes once ``y`` is built, as the plain version does."""
    if scale == "sigmoid":
        return torch.sigmoid(raw_scale + 2.0), None
    if scale == "exp":
        log_s = clamp * torch.tanh(raw_scale / clamp)
        return torch.exp(log_s), log_s
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _transform(x_b, s, shift, inverse):
    if s is None:
        return x_b - shift if inverse else x_b + shift
    if inverse:
        return (x_b - shift) / s
    return x_b * s + shift


def _coupling(x, raw_scale, shift, mask, flip, inverse, scale, clamp):
    """``scale`` None: additive. The order of the steps is the plain version's (``chunk``, ``s``, ``y``,
    ``log s``): autograd runs the backward nodes in the reverse order of their creation, and so keeps the same
    tensors live at once."""
    batch, acc = x.shape[0], accumulation_dtype(x.dtype)
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if mask == "channel":
        x_a, x_b = x.chunk(2, dim=1)
        if flip:
            x_a, x_b = x_b, x_a
        s, log_s = (None, None) if scale is None else _scale(raw_scale, scale, clamp)
        y_b = _transform(x_b, s, shift, inverse)
        y = torch.cat([y_b, x_a] if flip else [x_a, y_b], dim=1)
        del y_b  # not live beside log(s): the plain version's peak memory
        if s is None:
            return y, x.new_zeros(batch, dtype=acc)
        logdet = (torch.log(s) if log_s is None else log_s).flatten(1).sum(1, dtype=acc)
        return y, -logdet if inverse else logdet
    if mask == "checkerboard":
        b = checkerboard_mask(x, flip)
        s, log_s = (None, None) if scale is None else _scale(raw_scale, scale, clamp)
        y = torch.where(b, _transform(x, s, shift, inverse), x)
        if s is None:
            return y, x.new_zeros(batch, dtype=acc)
        log_s = torch.log(s) if log_s is None else log_s
        logdet = torch.where(b, log_s.to(acc), 0.0).flatten(1).sum(1)
        return y, -logdet if inverse else logdet


def affine_coupling(
    x: torch.Tensor,
    raw_scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    mask: str = "channel",
    scale: str = "sigmoid",
    flip: bool = False,
    inverse: bool = False,
    clamp: float = CLAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling ``y_b = x_b · s(h_s) + h_t`` (or its inverse) and ``log|det J|`` of shape ``[B]``.

    Args:
        x: ``[B, C, H, W]`` or ``[B, D]``, the whole input.
        raw_scale, shift: ``h_s``, ``h_t`` from the conditioner: the transformed half (``mask="channel"``,
            ``[B, C/2, ...]``) or the whole input's shape (``mask="checkerboard"``).
    """
    return _coupling(x, raw_scale, shift, mask, flip, inverse, scale, clamp)


def additive_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    *,
    mask: str = "channel",
    flip: bool = False,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NICE's additive coupling ``y_b = x_b + h_t`` (or its inverse); ``log|det J| = 0``, shape ``[B]``."""
    return _coupling(x, None, shift, mask, flip, inverse, None, CLAMP)


def affine_coupling_backward(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    z: torch.Tensor,
    raw_scale: torch.Tensor,
    *,
    mask: str = "channel",
    scale: str = "sigmoid",
    flip: bool = False,
    inverse: bool = False,
    clamp: float = CLAMP,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(∂L/∂x_in, ∂L/∂h_s, ∂L/∂h_t)`` of :func:`affine_coupling`, from ``z`` and ``h_s`` alone.

    ``z`` is the coupling's input ``x`` (forward) or its output ``x`` (inverse); ``grad_y`` is the gradient
    of the output, ``grad_logdet`` ``[B]`` that of the log-determinant. With ``d = ∂log s/∂h_s``:
    forward ``(g·s, d·(g·z·s + g_ld), g)``; inverse ``(g/s, −d·(g·z + g_ld), −g/s)`` on the transformed
    positions, ``(g, 0, 0)`` on the others. Tests check this against autograd through the reference.
    """
    d = log_scale_derivative(raw_scale, scale, clamp)
    g_ld = grad_logdet.to(z.dtype).reshape(-1, *([1] * (z.dim() - 1)))
    if mask == "channel":
        g_a, g_b = grad_y.chunk(2, dim=1)
        z_b = z.chunk(2, dim=1)[0 if flip else 1]
        if flip:
            g_a, g_b = g_b, g_a
    elif mask == "checkerboard":
        g_a, g_b, z_b = grad_y, grad_y, z
    else:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if inverse:
        # 1/s directly: 1 + exp(−(h + 2)) for the sigmoid (exact also where s is subnormal), exp(−log s) for exp.
        if scale == "sigmoid":
            inv_s = 1.0 + torch.exp(-(raw_scale + 2.0))
        else:
            inv_s = torch.exp(-log_scale(raw_scale, scale, clamp))
        grad_x_b, grad_raw, grad_shift = g_b * inv_s, -d * (g_b * z_b + g_ld), -g_b * inv_s
    else:
        s, _ = _scale(raw_scale, scale, clamp)
        grad_x_b, grad_raw, grad_shift = g_b * s, d * (g_b * z_b * s + g_ld), g_b
    if mask == "channel":
        grad_x = torch.cat([grad_x_b, g_a] if flip else [g_a, grad_x_b], dim=1)
        return grad_x, grad_raw, grad_shift.contiguous()
    b = checkerboard_mask(z, flip)
    return torch.where(b, grad_x_b, grad_y), torch.where(b, grad_raw, 0.0), torch.where(b, grad_shift, 0.0)
