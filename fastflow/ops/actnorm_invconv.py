"""The fused ActNorm + invertible 1×1 convolution op (Glow), with the LU-parametrised weight.

``actnorm_invconv`` builds the folded ``C×C`` weight and ``C`` bias of the step from the LU and ActNorm
parameters (small differentiable PyTorch algebra, ``fastflow.reference.actnorm_invconv.folded_weight``: the
inverse uses triangular solves), then makes one pass over the pixels with the custom op
``fastflow::actnorm_invconv_fwd``: ``y = W'·x + b'`` per pixel. Its backward is the custom op
``fastflow::actnorm_invconv_bwd``, on the forward's backend; both come from the one declaration
``ACTNORM_INVCONV`` (``fastflow.ops.declaration``). Gradients reach the LU and ActNorm parameters through the
``C×C`` algebra. The log-determinant ``±H·W·(Σ log_scale + Σ log|s|)`` is a sum of ``2C`` numbers on the
device: no ``slogdet``, no ``.item()``, no host synchronisation.

Arguments: ``actnorm_invconv`` checks every argument's type, shape and device, and the values of ``perm`` (a
permutation) and ``sign_s`` (only ``±1``) with one host read per tensor and version; ``check_values=False``
skips that read for the layers, whose buffers are checked when they change (``fastflow.nn.invconv``).

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
from fastflow._checks import check_floating, check_once, permutation_problem, values_readable
from fastflow.ops import lu_fold
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
    check_floating("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got {x.dim()} dimensions (shape {tuple(x.shape)})")
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
    if sign_s.dtype == torch.bool or sign_s.is_complex():
        raise TypeError(f"sign_s must be a real tensor of -1 and +1 (the signs of s), got {sign_s.dtype}")
    for name, value in (("lower", lower), ("upper", upper), ("log_s", log_s), ("log_scale", log_scale),
                        ("bias", bias)):
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")


def _listing(t: Tensor) -> str:
    values = t.detach().cpu().tolist()
    return str(values) if len(values) <= 16 else f"[{', '.join(map(str, values[:16]))}, ...] ({len(values)} values)"


def check_perm_and_signs(perm: Tensor | None, sign_s: Tensor | None, *, prefix: str = "") -> None:
    """``perm`` a permutation of ``0..C-1`` and ``sign_s`` only ``-1``/``+1``, else a ``ValueError`` naming them.

    A duplicate in ``perm`` makes ``P`` singular and an entry of ``sign_s`` off ``±1`` changes ``|det W|``: both
    would give a silently wrong log-determinant, an index out of range an ``IndexError`` deep inside. Both checks
    are one host read (one synchronisation for a GPU tensor); ``prefix`` goes before the names (a state_dict key).
    Shapes and dtypes are the caller's to check.
    """
    flags = []
    if perm is not None:
        expected = torch.arange(perm.shape[0], device=perm.device, dtype=perm.dtype)
        flags.append((torch.sort(perm).values == expected).all())
    if sign_s is not None:
        flags.append((sign_s.abs() == 1).all())  # NaN fails too
    if not flags or all(torch.stack([f.to(flags[0].device) for f in flags]).tolist()):
        return
    if perm is not None and not bool(flags[0]):
        channels = perm.shape[0]
        values = perm.detach().cpu().tolist()
        problem = permutation_problem(values, channels)
        if problem.endswith("out of range"):
            problem += f" for {channels} channels"
        raise ValueError(
            f"{prefix}perm must be a permutation of 0..{channels - 1} (each index exactly once), got "
            f"{_listing(perm)}: {problem}"
        )
    values = sign_s.detach().cpu().tolist()
    index, bad = next((i, v) for i, v in enumerate(values) if abs(v) != 1)
    raise ValueError(
        f"{prefix}sign_s must hold only -1 and +1 (the signs of s; log|s| is log_s), got {_listing(sign_s)}: "
        f"{bad} at index {index}"
    )


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
    check_values: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fused ActNorm → LU 1×1 convolution ``y = W·(exp(log_scale) ⊙ x + bias)`` (or its inverse) with ``log|det J|``.

    Args:
        x: ``[B, C, H, W]``, any strides.
        log_scale, bias: ActNorm's parameters ``[C]``, or ``None`` for none (the plain 1×1 convolution).
        lower, upper: ``[C, C]``; their strictly lower / upper triangles are ``L − I`` and ``U`` (the rest is
            ignored). log_s: ``log|s|`` ``[C]``, the diagonal of ``U + diag(s)``.
        perm: ``[C]`` integer permutation, ``(P·v)_i = v[perm[i]]``; sign_s: ``[C]`` signs of ``s`` (±1). Their
            values are checked (a ``ValueError`` otherwise): one host read the first time a tensor (at its current
            version) is seen, none afterwards and none under ``torch.compile``.
        inverse: compute ``x = exp(−log_scale) ⊙ (W⁻¹·y − bias)`` from ``x`` playing the role of ``y``.
        check_values: ``False`` skips the check of ``perm``'s and ``sign_s``'s values, for a caller that checks
            them itself when they change (``InvConv1x1``'s buffers); shapes, dtypes and devices are always checked.

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
    # perm and sign_s come from the caller: their values are checked here, one host read (a synchronisation for
    # GPU tensors) the first time each tensor is seen at its current version. The layers (InvConv1x1, FlowStep)
    # pass check_values=False for their own buffers instead, which they check when the buffers change
    # (load_state_dict, assignment): DDP's buffer broadcast bumps the version every step, and a Glow training step
    # makes no host synchronisation. Under torch.compile there is no host read (it would break the graph): the
    # values of a compiled call are not checked.
    if check_values and values_readable(perm, sign_s):
        check_once([perm, sign_s], lambda: check_perm_and_signs(perm, sign_s))
    return _run(x, log_scale, bias, lower, upper, log_s, perm, sign_s, bool(inverse))


def actnorm_invconv_rebuild_backward(
    y: Tensor,
    log_scale: Tensor | None,
    bias: Tensor | None,
    lower: Tensor,
    upper: Tensor,
    log_s: Tensor,
    *,
    perm: Tensor,
    sign_s: Tensor,
    grad_y: Tensor,
    grad_logdet: Tensor | None,
    params: list[Tensor],
) -> tuple[Tensor, Tensor, list[Tensor | None]] | None:
    """The backward of the forward step ``y = actnorm_invconv(x, ...)`` from its output, for the memory-saving
    backward (``fastflow.nn.memory``): ``(x, ∂L/∂x, [∂L/∂p for p in params])``, or None under the forced plain
    reference (whose autograd graph the caller then records the usual way).

    ``x`` is rebuilt by the inverse (one pass); ``∂L/∂x`` and the folded weight's and bias's gradients come from the
    backward kernel on that ``x``, which is what autograd would run after re-running the forward, without the
    forward's pass; the parameters' gradients then come through the small ``C×C`` algebra (its graph recorded
    here, with the log-determinant's). ``params``: those of ``log_scale``, ``bias``, ``lower``, ``upper``, ``log_s``
    wanted (others get no entry).
    """
    if _backends.plain_reference():
        return None
    with torch.no_grad():
        x, _ = _run(y, log_scale, bias, lower, upper, log_s, perm, sign_s, True)
    acc = accumulation_dtype(y.dtype)
    with torch.autocast(y.device.type, enabled=False):
        weight, shift, w_lu, l_unit, u_prime = lu_fold.fold(log_scale, bias, lower, upper, log_s, perm, sign_s, acc)
    weight_c = weight.contiguous()
    backend = ACTNORM_INVCONV.select((x, weight_c, shift), _backends.requested(), "fwd")
    grad_x, grad_weight, grad_shift = ACTNORM_INVCONV.call("bwd", grad_y.contiguous(), x, weight_c, backend=backend)
    # The parameters' gradients through the C×C algebra, written out (lu_fold.fold_backward): no graph to record.
    found = lu_fold.fold_backward(grad_weight, grad_shift, grad_logdet, y.shape[2] * y.shape[3], weight, w_lu,
                                  l_unit, u_prime, perm, log_scale, bias)
    by_tensor = {id(t): g for t, g in zip((log_scale, bias, lower, upper, log_s), found, strict=True) if t is not None}
    if any(id(p) not in by_tensor for p in params):
        raise RuntimeError("actnorm_invconv_rebuild_backward: params must be among log_scale, bias, lower, upper and "
                           "log_s (the same tensors)")
    return x, grad_x, [None if by_tensor[id(p)] is None else by_tensor[id(p)].to(p.dtype) for p in params]


def _run(x, log_scale, bias, lower, upper, log_s, perm, sign_s, inverse: bool) -> tuple[Tensor, Tensor]:
    if _backends.plain_reference():
        # The forced reference is the plain-PyTorch spec (ActNorm, then conv2d), differentiated by autograd.
        return reference.actnorm_invconv(
            x, log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s, inverse=bool(inverse)
        )
    acc = accumulation_dtype(x.dtype)
    pixels = x.shape[2] * x.shape[3]
    # The C×C algebra stays in float32 under autocast: W is the flow's invertible map, not a bulk product.
    with torch.autocast(x.device.type, enabled=False):
        if not inverse and not torch.compiler.is_compiling():
            # One autograd node for the fold and the log-determinant (under torch.compile, the plain algebra:
            # inductor fuses it).
            weight, shift, logdet = lu_fold.folded_weight_and_logdet(
                log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s, dtype=acc, batch=x.shape[0],
                pixels=pixels,
            )
        else:
            weight, shift = reference.folded_weight(
                log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s, inverse=bool(inverse), dtype=acc
            )
            logdet = reference.logdet(log_scale, log_s, x.shape[0], pixels, acc, bool(inverse))
    y = ACTNORM_INVCONV.call("fwd", x, weight.contiguous(), shift.contiguous())
    return y, logdet
