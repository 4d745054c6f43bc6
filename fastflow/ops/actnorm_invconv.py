"""The fused ActNorm + invertible 1×1 convolution op (Glow), with the LU-parametrised weight.

``actnorm_invconv`` builds the folded ``C×C`` weight and ``C`` bias of the step from the LU and ActNorm
parameters (small differentiable PyTorch algebra, ``fastflow.reference.actnorm_invconv.folded_weight``: the
inverse uses triangular solves), then makes one pass over the pixels with the custom op
``fastflow::actnorm_invconv_fwd``: ``y = W'·x + b'`` per pixel. Its backward is the custom op
``fastflow::actnorm_invconv_bwd``, on the forward's backend; both come from the one declaration
``ACTNORM_INVCONV`` (``fastflow.ops.declaration``). Gradients reach the LU and ActNorm parameters through the
``C×C`` algebra. The log-determinant ``±H·W·(Σ log_scale + Σ log|s|)`` is a sum of ``2C`` numbers on the
device: no ``slogdet``, no ``.item()``, no host synchronisation.

Kernel contract (shared by every backend):

- ``actnorm_invconv_fwd(x [B, C, H, W], weight [C, C], bias [C]) -> y [B, C, H, W]``: ``x`` any strides and a
  float dtype; ``weight``/``bias`` contiguous, float32 (float64 when ``x`` is float64); ``y`` contiguous in the
  dtype of ``x``, accumulated in float32 (float64). The products are those of the plain ``conv2d`` the reference
  calls: the CPU kernel multiplies in float32 (float64); the Triton kernels multiply 16-bit inputs with the
  weight rounded to their dtype, as ``conv2d(x, W.to(x.dtype))`` does, and float32 inputs in TF32 where cuDNN
  would (``torch.backends.cudnn.allow_tf32``, PyTorch's default for convolutions) and ``C ≥ 64``, where the op
  is compute-bound (``kernels/actnorm_invconv.py``), else in IEEE float32.
- ``actnorm_invconv_bwd(grad_y, x, weight) -> (grad_x, grad_weight, grad_bias)``: ``grad_x = Wᵀ·g`` contiguous
  in the dtype of ``x``; ``grad_weight = Σ_{b,p} g·xᵀ`` ``[C, C]`` and ``grad_bias = Σ_{b,p} g`` ``[C]`` in the
  dtype of ``weight``, accumulated in float32 (float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow import _backends
from fastflow.ops.declaration import EXTENSION, FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference import actnorm_invconv as reference
from fastflow.reference.numerics import accumulation_dtype

_LOW = frozenset({torch.float16, torch.bfloat16, torch.float32})


def _reference_fwd(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # The reference computes in the input dtype; the op's contract is float32 math for low precision.
    return reference.channel_mix(x.to(weight.dtype), weight, bias).to(x.dtype).contiguous()


def _reference_bwd(grad_y: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    grad_x, grad_weight, grad_bias = reference.channel_mix_backward(grad_y, x, weight)
    return grad_x.contiguous(), grad_weight, grad_bias


def _fake_fwd(x, weight, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_bwd(grad_y, x, weight):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return grad_x, torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    return ACTNORM_INVCONV.call("bwd", grad_y.contiguous(), x, weight, backend=ctx.backend)


ACTNORM_INVCONV = Op(
    "actnorm_invconv",
    stages={
        "fwd": Stage("(Tensor x, Tensor weight, Tensor bias) -> Tensor", fake=_fake_fwd, lead="x"),
        "bwd": Stage("(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)", fake=_fake_bwd, lead="x"),
    },
    backends={
        "reference": Implementation(FLOATS, {"fwd": _reference_fwd, "bwd": _reference_bwd}),
        "cpu": Implementation(_LOW | {torch.float64}, EXTENSION),
        "triton": Implementation(_LOW, "fastflow.kernels.actnorm_invconv"),
    },
    autograd=Autograd(_setup_context, _backward),
)


# --------------------------------------------------------------------------------------------------
# Public function: argument checks.


def _check_vector(name: str, value: object, channels: int, like: Tensor) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != (channels,):
        raise ValueError(
            f"{name} must have shape ({channels},) for x with {channels} channels, got {tuple(value.shape)}"
        )
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but x is on {like.device}; put them on one device")


def _validate(x, log_scale, bias, lower, upper, log_s, perm, sign_s) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got {x.dim()} dimensions (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    channels = x.shape[1]
    for name, value in (("lower", lower), ("upper", upper)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if tuple(value.shape) != (channels, channels):
            raise ValueError(
                f"{name} must have shape ({channels}, {channels}) for x with {channels} channels, "
                f"got {tuple(value.shape)}"
            )
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but x is on {x.device}; put them on one device")
    for name, value in (("log_s", log_s), ("perm", perm), ("sign_s", sign_s)):
        _check_vector(name, value, channels, x)
    for name, value in (("log_scale", log_scale), ("bias", bias)):
        if value is not None:
            _check_vector(name, value, channels, x)
    if perm.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"perm must be an integer tensor (a permutation of 0..C-1), got {perm.dtype}")
    for name, value in (("lower", lower), ("upper", upper), ("log_s", log_s), ("log_scale", log_scale),
                        ("bias", bias)):
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")


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
    """Fused ActNorm → LU 1×1 convolution ``y = W·(exp(log_scale) ⊙ x + bias)`` (or its inverse) with ``log|det J|``.

    Args:
        x: ``[B, C, H, W]``, any strides.
        log_scale, bias: ActNorm's parameters ``[C]``, or ``None`` for none (the plain 1×1 convolution).
        lower, upper: ``[C, C]``; their strictly lower / upper triangles are ``L − I`` and ``U`` (the rest is
            ignored). log_s: ``log|s|`` ``[C]``, the diagonal of ``U + diag(s)``.
        perm: ``[C]`` integer permutation, ``(P·v)_i = v[perm[i]]``; sign_s: ``[C]`` signs of ``s`` (±1).
        inverse: compute ``x = exp(−log_scale) ⊙ (W⁻¹·y − bias)`` from ``x`` playing the role of ``y``.

    Returns:
        ``(y [B, C, H, W], logdet [B])``, ``y`` contiguous on the fused path; ``logdet = ±H·W·(Σ log_scale +
        Σ log_s)``, float32 (float64 for float64 input), the log-determinant of the direction computed.

    Example:
        >>> C = 4; lower, upper = torch.randn(C, C) * 0.1, torch.randn(C, C) * 0.1
        >>> log_s, perm, sign_s = torch.zeros(C), torch.randperm(C), torch.ones(C)
        >>> x = torch.randn(2, C, 3, 3)
        >>> y, logdet = actnorm_invconv(x, None, None, lower, upper, log_s, perm=perm, sign_s=sign_s)
        >>> x_back, _ = actnorm_invconv(y, None, None, lower, upper, log_s, perm=perm, sign_s=sign_s, inverse=True)
        >>> torch.allclose(x_back, x, atol=1e-5)
        True
    """
    _validate(x, log_scale, bias, lower, upper, log_s, perm, sign_s)
    if _backends.plain_reference():
        # The forced reference is the plain-PyTorch spec (ActNorm, then conv2d), differentiated by autograd.
        return reference.actnorm_invconv(
            x, log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s, inverse=bool(inverse)
        )
    acc = accumulation_dtype(x.dtype)
    # The C×C algebra stays in float32 under autocast: W is the flow's invertible map, not a bulk product.
    with torch.autocast(x.device.type, enabled=False):
        weight, shift = reference.folded_weight(
            log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s, inverse=bool(inverse), dtype=acc
        )
    y = ACTNORM_INVCONV.call("fwd", x, weight.contiguous(), shift.contiguous())
    pixels = x.shape[2] * x.shape[3]
    return y, reference.logdet(log_scale, log_s, x.shape[0], pixels, acc, bool(inverse))
