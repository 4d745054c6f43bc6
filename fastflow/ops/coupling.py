"""The fused coupling op: affine (Glow, RealNVP) and additive (NICE) coupling with the log-determinant.

Public functions ``affine_coupling`` / ``additive_coupling`` check their arguments, bring every layout to
one canonical 4-d form and call the custom op ``fastflow::coupling_fwd``; its backward is the custom op
``fastflow::coupling_bwd``. Both come from the one declaration ``COUPLING`` (``fastflow.ops.declaration``):
the forward runs on the backend chosen per call — the reference (``fastflow.reference.coupling``), the C++
extension on CPU or CUDA tensors, or the Triton kernels — and its backward on the same one.

Kernel contract (shared by every backend):

- Canonical layout ``[B, C, H, W]`` with any strides. Vectors ``[B, D]`` are viewed as ``[B, D, 1, 1]`` for
  the channel mask and ``[B, 1, 1, D]`` for the checkerboard (whose parity is then ``d mod 2``).
- ``raw_scale`` and ``shift`` are ``[B, C/2, H, W]`` (channel mask) or ``[B, C, H, W]`` (checkerboard), any
  strides, read in place (views of the conditioner's output need no copy); ``raw_scale`` is None for the
  additive coupling.
- ``coupling_fwd -> (y, logdet)``: ``y`` contiguous, dtype of ``x``; ``logdet`` ``[B]`` float32 (float64 for
  float64 inputs), reduced in the same pass.
- ``coupling_bwd(grad_y, grad_logdet, z, raw_scale) -> (grad_x, grad_raw_scale, grad_shift)``, where ``z`` is
  the op's input ``x`` (forward direction) or its output ``x`` (inverse direction): the gradient needs only
  ``z`` and ``log s``, never the shift. With ``d = ∂log s/∂h_s`` and ``g`` the incoming gradient:
  forward ``(g·s, d·(g·z·s + g_logdet), g)``; inverse ``(g/s, −d·(g·z + g_logdet), −g/s)``;
  pass-through positions get ``g`` for ``x`` and 0 for the conditioner's outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastflow import _backends
from fastflow._checks import check_floating
from fastflow._codes import MASK_CHANNEL, MASK_CODES, MASK_NAMES, SCALE_ADDITIVE, SCALE_CODES, SCALE_NAMES
from fastflow.ops.declaration import EXTENSION, FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference import coupling as reference
from fastflow.reference.numerics import accumulation_dtype

_AFFINE_SCALES = {name: code for name, code in SCALE_CODES.items() if code != SCALE_ADDITIVE}
_LOW = frozenset({torch.float16, torch.bfloat16, torch.float32})


# --------------------------------------------------------------------------------------------------
# Stages of the reference backend (the fallback: a device or dtype no kernel covers) and fake functions.


def _reference_fwd(x, raw_scale, shift, mask, scale, flip, inverse, clamp):
    mask_name = MASK_NAMES[mask]
    if scale == SCALE_ADDITIVE:
        y, logdet = reference.additive_coupling(x, shift, mask=mask_name, flip=flip, inverse=inverse)
    else:
        y, logdet = reference.affine_coupling(
            x, raw_scale, shift, mask=mask_name, scale=SCALE_NAMES[scale], flip=flip, inverse=inverse, clamp=clamp
        )
    return y.contiguous(), logdet


def _reference_bwd(grad_y, grad_logdet, z, raw_scale, mask, scale, flip, inverse, clamp):
    grads = reference.affine_coupling_backward(
        grad_y, grad_logdet, z, raw_scale,
        mask=MASK_NAMES[mask], scale=SCALE_NAMES[scale], flip=flip, inverse=inverse, clamp=clamp,
    )
    # Fresh contiguous tensors: a custom op's outputs may not alias its inputs (grad_shift = grad_y[b] does).
    return tuple(g.clone(memory_format=torch.contiguous_format) for g in grads)


def _fake_fwd(x, raw_scale, shift, mask, scale, flip, inverse, clamp):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return y, x.new_empty((x.shape[0],), dtype=accumulation_dtype(x.dtype))


def _fake_bwd(grad_y, grad_logdet, z, raw_scale, mask, scale, flip, inverse, clamp):
    grad_x = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    grad_raw = torch.empty(raw_scale.shape, dtype=raw_scale.dtype, device=raw_scale.device)
    return grad_x, grad_raw, torch.empty_like(grad_raw)


# --------------------------------------------------------------------------------------------------
# Autograd.


def _setup_context(ctx, inputs, output):
    x, raw_scale, shift, mask, scale, flip, inverse, clamp = inputs
    y, _ = output
    # The inverse saves its output: x = (y − h_t)/s is all its gradient needs, and h_t is not kept.
    ctx.save_for_backward(y if inverse else x, raw_scale)
    ctx.config = (mask, scale, flip, inverse, clamp)


def _transformed_part(grad: Tensor, mask: int, flip: bool) -> Tensor:
    """The transformed positions of a canonical ``[B, C, H, W]`` tensor, zero elsewhere (checkerboard)."""
    if mask == MASK_CHANNEL:
        half = grad.shape[1] // 2
        return grad[:, :half] if flip else grad[:, half:]
    b = reference.checkerboard_mask(grad, flip)
    return torch.where(b, grad, 0.0)


def _backward(ctx, grad_y, grad_logdet):
    z, raw_scale = ctx.saved_tensors
    mask, scale, flip, inverse, clamp = ctx.config
    if grad_y is None:
        grad_y = torch.zeros_like(z)
    if scale == SCALE_ADDITIVE:
        # y_b = x_b ± h_t: the Jacobian is the identity plus a shift, no kernel is worth a launch here.
        grad_shift = _transformed_part(grad_y, mask, flip)
        return grad_y, None, (-grad_shift if inverse else grad_shift), None, None, None, None, None
    if grad_logdet is None:
        grad_logdet = torch.zeros(z.shape[0], dtype=accumulation_dtype(z.dtype), device=z.device)
    grad_x, grad_raw, grad_shift = COUPLING.call(
        "bwd", grad_y, grad_logdet, z, raw_scale, mask, scale, flip, inverse, clamp, backend=ctx.backend
    )
    return grad_x, grad_raw, grad_shift, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# The declaration.

COUPLING = Op(
    "coupling",
    stages={
        "fwd": Stage(
            "(Tensor x, Tensor? raw_scale, Tensor shift, int mask, int scale, bool flip, bool inverse, float clamp)"
            " -> (Tensor, Tensor)",
            fake=_fake_fwd,
            lead="x",
        ),
        "bwd": Stage(
            "(Tensor grad_y, Tensor grad_logdet, Tensor z, Tensor raw_scale, int mask, int scale, bool flip, "
            "bool inverse, float clamp) -> (Tensor, Tensor, Tensor)",
            fake=_fake_bwd,
            lead="z",
        ),
    },
    backends={
        "reference": Implementation(FLOATS, {"fwd": _reference_fwd, "bwd": _reference_bwd}),
        "cpu": Implementation(_LOW | {torch.float64}, EXTENSION),
        "triton": Implementation(_LOW, "fastflow.kernels.coupling"),
        "cuda": Implementation(_LOW, EXTENSION),
    },
    autograd=Autograd(_setup_context, _backward),
)

# --------------------------------------------------------------------------------------------------
# Public functions: argument checks and layouts.


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _expected_param_shape(x: Tensor, mask: str) -> tuple[int, ...]:
    if mask == "channel":
        return (x.shape[0], x.shape[1] // 2, *x.shape[2:])
    return tuple(x.shape)


def _canonical(t: Tensor, mask: str) -> Tensor:
    """``[B, C, H, W]`` view of an image or vector tensor (no copy)."""
    if t.dim() == 4:
        return t
    return t[:, :, None, None] if mask == "channel" else t[:, None, None, :]


def _validate(x, params: dict[str, Tensor | None], mask: str, scale: str | None) -> None:
    check_floating("x", x)
    if x.dim() not in (2, 4):
        raise ValueError(f"x must be [B, C, H, W] or [B, D], got {x.dim()} dimensions (shape {tuple(x.shape)})")
    if mask not in MASK_CODES:
        raise ValueError(f"mask must be one of {tuple(MASK_CODES)}, got {mask!r}")
    if scale is not None and scale not in _AFFINE_SCALES:
        raise ValueError(f"scale must be one of {tuple(_AFFINE_SCALES)}, got {scale!r}")
    if mask == "channel" and x.shape[1] % 2:
        raise ValueError(
            f"x: mask='channel' splits dimension 1 in halves and needs an even size, got {x.shape[1]} "
            f"(shape {tuple(x.shape)})"
        )
    expected = _expected_param_shape(x, mask)
    for name, value in params.items():
        _check_tensor(name, value)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for x of shape {tuple(x.shape)} and mask={mask!r}, "
                f"got {tuple(value.shape)}"
            )
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but x is on {x.device}; put them on one device")
        if value.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but x has {x.dtype}; they must match")


def affine_coupling(
    x: Tensor,
    raw_scale: Tensor,
    shift: Tensor,
    *,
    mask: str = "channel",
    scale: str = "sigmoid",
    flip: bool = False,
    inverse: bool = False,
    clamp: float = reference.CLAMP,
) -> tuple[Tensor, Tensor]:
    """Fused affine coupling ``y_b = x_b · s(h_s) + h_t`` (or its inverse) with ``log|det J|``.

    Args:
        x: the whole input, ``[B, C, H, W]`` or ``[B, D]``.
        raw_scale: ``h_s`` from the conditioner; ``[B, C/2, H, W]`` for ``mask="channel"`` (the transformed
            half), the shape of ``x`` for ``"checkerboard"`` (pass-through positions ignored). Views are fine.
        shift: ``h_t``, same shape as ``raw_scale``.
        mask: ``"channel"`` (halves of dimension 1) or ``"checkerboard"`` (spatial / index parity).
        scale: ``"sigmoid"`` for Glow's ``sigmoid(h_s + 2)``, ``"exp"`` for ``exp(c·tanh(h_s/c))``, ``c = clamp``.
        flip: transform the first half / the even positions instead of the second half / odd positions.
        inverse: compute ``x_b = (y_b − h_t)/s`` from ``x`` playing the role of ``y``.

    Returns:
        ``(y, logdet)``: ``y`` shaped like ``x``; ``logdet`` ``[B]``, float32 (float64 for float64 input), the
        log-determinant of the direction computed.

    Example:
        >>> x = torch.randn(8, 6, 4, 4); h = torch.randn(8, 6, 4, 4)
        >>> y, logdet = affine_coupling(x, h[:, 0::2], h[:, 1::2])
        >>> affine_coupling(y, h[:, 0::2], h[:, 1::2], inverse=True)[0].allclose(x, atol=1e-5)
        True
    """
    _validate(x, {"raw_scale": raw_scale, "shift": shift}, mask, scale)
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0 < clamp < math.inf:
        raise ValueError(f"clamp must be a positive finite number, got {clamp!r}")
    if _backends.plain_reference():
        # The forced reference is the plain-PyTorch spec, differentiated by autograd (the benchmarks' baseline).
        return reference.affine_coupling(
            x, raw_scale, shift, mask=mask, scale=scale, flip=bool(flip), inverse=bool(inverse), clamp=float(clamp)
        )
    y, logdet = COUPLING.call(
        "fwd",
        _canonical(x, mask),
        _canonical(raw_scale, mask),
        _canonical(shift, mask),
        MASK_CODES[mask],
        SCALE_CODES[scale],
        bool(flip),
        bool(inverse),
        float(clamp),
    )
    return y.view(x.shape), logdet


def affine_coupling_backward(
    z: Tensor,
    raw_scale: Tensor,
    grad_y: Tensor,
    grad_logdet: Tensor | None,
    *,
    mask: str = "channel",
    scale: str = "sigmoid",
    flip: bool = False,
    inverse: bool = False,
    clamp: float = reference.CLAMP,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The backward of :func:`affine_coupling` called directly, without a recorded forward (the memory-saving
    walk's, ``fastflow.nn.coupling``): ``(∂L/∂x, ∂L/∂raw_scale, ∂L/∂shift)``, or None under the forced plain
    reference (whose caller then differentiates the plain forward).

    ``z``: the forward call's input ``x`` (``inverse=False``) or its output (``inverse=True``), the kernel
    contract's ``z``; ``raw_scale`` as given to that call; ``grad_y`` shaped like ``z``; ``grad_logdet`` ``[B]`` or
    None (zero). Arguments are those of the forward call, which checked them."""
    if _backends.plain_reference():
        return None
    canonical_z = _canonical(z, mask)
    if grad_logdet is None:
        grad_logdet = torch.zeros(z.shape[0], dtype=accumulation_dtype(z.dtype), device=z.device)
    args = (_canonical(grad_y.to(z.dtype), mask), grad_logdet.to(accumulation_dtype(z.dtype)), canonical_z,
            _canonical(raw_scale, mask), MASK_CODES[mask], SCALE_CODES[scale], bool(flip), bool(inverse),
            float(clamp))
    # The backend the forward call ran on (the choice is cached per device and dtype).
    backend = COUPLING.select((canonical_z, args[3], args[3], *args[4:]), _backends.requested(), "fwd")
    grad_x, grad_raw, grad_shift = COUPLING.call("bwd", *args, backend=backend)
    return grad_x.view(z.shape), grad_raw.view(raw_scale.shape), grad_shift.view(raw_scale.shape)


def additive_coupling_backward(
    grad_y: Tensor, *, mask: str = "channel", flip: bool = False, inverse: bool = False
) -> tuple[Tensor, Tensor] | None:
    """The backward of :func:`additive_coupling` called directly (the memory-saving walk's): ``(∂L/∂x, ∂L/∂shift)``
    — the identity and ``±`` the transformed part of ``grad_y`` — or None under the forced plain reference."""
    if _backends.plain_reference():
        return None
    part = _transformed_part(_canonical(grad_y, mask), MASK_CODES[mask], bool(flip))
    shape = _expected_param_shape(grad_y, mask)
    return grad_y, (-part if inverse else part).reshape(shape)


def additive_coupling(
    x: Tensor,
    shift: Tensor,
    *,
    mask: str = "channel",
    flip: bool = False,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fused additive coupling of NICE, ``y_b = x_b + h_t`` (or its inverse); ``logdet`` is zero, ``[B]``.

    Arguments as in :func:`affine_coupling`.
    """
    _validate(x, {"shift": shift}, mask, None)
    if _backends.plain_reference():
        return reference.additive_coupling(x, shift, mask=mask, flip=bool(flip), inverse=bool(inverse))
    y, logdet = COUPLING.call(
        "fwd", _canonical(x, mask), None, _canonical(shift, mask), MASK_CODES[mask], SCALE_ADDITIVE,
        bool(flip), bool(inverse), reference.CLAMP,
    )
    return y.view(x.shape), logdet
