"""The fused NADE op: every conditional's logit and the log-likelihood in one scan over the dimensions, its fused
backward (a reverse scan), and incremental sampling.

``nade(x, W, c, V, b)`` checks its arguments and calls the custom op ``fastflow::nade_fwd``, whose backward is
``fastflow::nade_bwd``; ``nade_sample(W, c, V, b, u)`` calls ``fastflow::nade_sample`` (not differentiable).
The three come from the one declaration ``NADE`` (``fastflow.ops.declaration``): the forward runs on the
backend chosen per call — the reference stages (``fastflow.reference.nade``: the kernels' algorithm in plain
PyTorch), the C++ extension on CPU tensors (``csrc/cpu/nade.cpp``), or the Triton kernels
(``kernels/nade.py``) — and its backward on the same one. The math, and why the running pre-activation is
compensated, is the docstring of ``fastflow.reference.nade``.

Orders. ``order`` (a permutation of ``0..D−1``) makes dimension ``order[k]`` the ``k``-th of the scan: the public
functions gather ``x``'s columns, ``W``'s columns, ``V``'s rows and ``b`` (differentiable ``index_select``: the
gradients come back to the parameters of each dimension) and put the logits back in the dimensions' own order,
so that the kernels know one order only. The parameters belong to dimensions, not scan positions: a model that
changes its order keeps its parameters' meaning. The gathers copy ``O(D·H)`` numbers per call, noise beside
the ``O(B·D·H)`` scan.

Kernel contract (shared by every backend):

- ``nade_fwd(x [B, D], W [H, D], c [H], V [D, H], b [D]) -> (logits [B, D], log_prob [B])``: one dtype for all
  five (any strides), computed in float32 for 16-bit inputs (float64 for float64); both outputs contiguous in
  that accumulation dtype (the public function casts the logits to the input dtype). Memory beyond the outputs:
  ``O(B·H)``. The running ``a`` is an unevaluated sum ``hi + lo`` updated by TwoSum.
- ``nade_bwd(grad_logits [B, D], grad_log_prob [B], x, W, c, V, b, logits [B, D]) -> (grad_x, grad_W, grad_c,
  grad_V, grad_b)``: ``logits`` are the forward's (accumulation dtype), the only thing the forward saves beyond
  its inputs; the gradients come back contiguous in their inputs' dtypes. The reverse scan starts from
  ``a_D = c + x·Wᵀ`` as an unevaluated ``hi + lo`` (the reference and Triton: computed in float64 and split;
  the CPU kernel: rebuilt by the forward's own compensated updates, its final state bit for bit) and recovers
  ``a_i`` by compensated subtraction. Its workspace (freed when it returns, never ``B·D·H``): ``O(B·H)`` of
  running state, ``P`` partial sums ``[D, H]`` of the weight gradients (one per batch chunk, ``P ≤ 8`` on the
  CPU, a few per SM on a GPU) and ``T`` partial dots ``[B, D]`` of ``∂L/∂x`` (one per tile of hidden units:
  ``T = ⌈H/512⌉`` on the CPU, ``⌈H/32⌉`` in Triton).
- ``nade_sample(W, c, V, b, u [B, D]) -> x [B, D]``: ``x_i = (u_i < sigmoid(logit_i))`` (``u`` compared in the
  accumulation dtype), in the parameters' dtype; ``u`` may have any float dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastflow import _backends
from fastflow._checks import check_floating, check_once, permutation_problem, values_readable
from fastflow.ops.declaration import EXTENSION, FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference import nade as reference
from fastflow.reference.numerics import accumulation_dtype

_LOW = frozenset({torch.float16, torch.bfloat16, torch.float32})


# --------------------------------------------------------------------------------------------------
# Reference stages (the fallback: a device or dtype no kernel covers) and fake functions.


def _reference_fwd(x, W, c, V, b):
    return reference.nade_scan(x, W, c, V, b)


def _reference_bwd(grad_logits, grad_log_prob, x, W, c, V, b, logits):
    return reference.nade_backward(grad_logits, grad_log_prob, x, W, c, V, b, logits)


def _reference_sample(W, c, V, b, u):
    return reference.nade_sample(W, c, V, b, u)


def _empty(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)


def _fake_fwd(x, W, c, V, b):
    acc = accumulation_dtype(x.dtype)
    return _empty(x, acc), x.new_empty((x.shape[0],), dtype=acc)


def _fake_bwd(grad_logits, grad_log_prob, x, W, c, V, b, logits):
    return _empty(x), _empty(W), _empty(c), _empty(V), _empty(b)


def _fake_sample(W, c, V, b, u):
    return _empty(u, W.dtype)


# --------------------------------------------------------------------------------------------------
# Autograd.


def _setup_context(ctx, inputs, output):
    x, W, c, V, b = inputs
    logits, _ = output
    ctx.save_for_backward(x, W, c, V, b, logits)


def _backward(ctx, grad_logits, grad_log_prob):
    x, W, c, V, b, logits = ctx.saved_tensors
    if grad_logits is None:
        grad_logits = torch.zeros_like(logits)
    if grad_log_prob is None:
        grad_log_prob = logits.new_zeros(logits.shape[0])
    return NADE.call("bwd", grad_logits, grad_log_prob, x, W, c, V, b, logits, backend=ctx.backend)


# --------------------------------------------------------------------------------------------------
# The declaration.

NADE = Op(
    "nade",
    stages={
        "fwd": Stage("(Tensor x, Tensor W, Tensor c, Tensor V, Tensor b) -> (Tensor, Tensor)", fake=_fake_fwd,
                     lead="x"),
        "bwd": Stage(
            "(Tensor grad_logits, Tensor grad_log_prob, Tensor x, Tensor W, Tensor c, Tensor V, Tensor b, "
            "Tensor logits) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
            fake=_fake_bwd,
            lead="x",
        ),
        # Not differentiable, and not the entry: the public nade_sample picks its backend (NADE.select).
        "sample": Stage("(Tensor W, Tensor c, Tensor V, Tensor b, Tensor u) -> Tensor", fake=_fake_sample, lead="W"),
    },
    backends={
        "reference": Implementation(
            FLOATS, {"fwd": _reference_fwd, "bwd": _reference_bwd, "sample": _reference_sample}
        ),
        "cpu": Implementation(_LOW | {torch.float64}, EXTENSION),
        "triton": Implementation(_LOW, "fastflow.kernels.nade"),
    },
    autograd=Autograd(_setup_context, _backward),
)


# --------------------------------------------------------------------------------------------------
# Argument checks.


def _check_tensor(name: str, value: object, shape: tuple[int, ...], what: str, like: Tensor, like_name: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but {like_name} is on {like.device}; put them on one device")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {like_name} has {like.dtype}; they must match")


def _check_parameters(W, c, V, b, dims: int | None, like: Tensor | None, like_name: str) -> tuple[int, int]:
    """``(H, D)`` of NADE's parameters, checked against each other (and against ``like``, the data)."""
    check_floating("W", W)
    if W.dim() != 2:
        raise ValueError(f"W must be [H, D] (hidden units by dimensions), got shape {tuple(W.shape)}")
    hidden, w_dims = W.shape
    if dims is not None and w_dims != dims:
        raise ValueError(f"W must have shape (H, {dims}) for {like_name} with {dims} dimensions, got {tuple(W.shape)}")
    if hidden < 1 or w_dims < 1:
        raise ValueError(f"W must be [H, D] with H >= 1 and D >= 1, got shape {tuple(W.shape)}")
    if like is None:
        like, like_name = W, "W"
    else:
        _check_tensor("W", W, (hidden, w_dims), "hidden units by dimensions", like, like_name)
    _check_tensor("c", c, (hidden,), "one bias per hidden unit", like, like_name)
    _check_tensor("V", V, (w_dims, hidden), "dimensions by hidden units", like, like_name)
    _check_tensor("b", b, (w_dims,), "one bias per dimension", like, like_name)
    return hidden, w_dims


def _check_data(name: str, value: object, meaning: str) -> Tensor:
    check_floating(name, value)
    if value.dim() != 2:
        raise ValueError(f"{name} must be [B, D] ({meaning}), got shape {tuple(value.shape)}")
    return value


def _check_permutation(order: Tensor, dims: int) -> None:
    """``order`` holds each of ``0..D−1`` once (one host read), else a ``ValueError`` saying what is wrong."""
    values = order.detach().cpu().tolist()
    problem = permutation_problem(values, dims)
    if problem is None:
        return
    shown = values if len(values) <= 16 else f"[{', '.join(map(str, values[:16]))}, ...] ({len(values)} values)"
    raise ValueError(f"order must be a permutation of 0..{dims - 1} (each dimension once), got {shown}: {problem}")


def _order(order: object, dims: int, device: torch.device, check_values: bool) -> Tensor:
    """``order`` as an int64 tensor on ``device``, its shape and (unless ``check_values=False``) values checked.

    A sequence of ints is checked on the host for free; a tensor's values cost one host read the first time the
    tensor is seen at its current version (none afterwards, none under ``torch.compile``).
    """
    if isinstance(order, Tensor):
        if order.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"order must be an integer tensor (a permutation of 0..{dims - 1}), got {order.dtype}")
        if tuple(order.shape) != (dims,):
            raise ValueError(f"order must have shape ({dims},) for {dims} dimensions, got {tuple(order.shape)}")
        if order.device != device:
            raise ValueError(f"order is on {order.device} but the data are on {device}; put them on one device")
        if check_values and values_readable(order):
            check_once([order], lambda: _check_permutation(order, dims))
        return order.to(torch.int64)
    if isinstance(order, Sequence) and not isinstance(order, str):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in order):
            raise TypeError(f"order must be a sequence of ints or an integer tensor, got {order!r}")
        if len(order) != dims:
            raise ValueError(f"order must have {dims} entries (one per dimension), got {len(order)}")
        tensor = torch.tensor(list(order), dtype=torch.int64)
        if check_values:
            _check_permutation(tensor, dims)
        return tensor.to(device)
    raise TypeError(f"order must be None, a sequence of ints or an integer tensor, got {type(order).__name__}")


# --------------------------------------------------------------------------------------------------
# Public functions.


def nade(
    x: Tensor,
    W: Tensor,
    c: Tensor,
    V: Tensor,
    b: Tensor,
    *,
    order: Tensor | Sequence[int] | None = None,
    check_values: bool = True,
) -> tuple[Tensor, Tensor]:
    """NADE's logits of every conditional and the log-likelihood of ``x``, in one fused scan.

    Args:
        x: ``[B, D]`` float, values 0/1 (binarity is the caller's to check; other values are computed with as
            the formula says); any strides.
        W: ``[H, D]``; c: ``[H]``; V: ``[D, H]``; b: ``[D]``: one dtype and device with ``x``.
        order: ``None`` (the natural order) or a permutation of ``0..D−1`` (a sequence of ints or an integer
            tensor): dimension ``order[k]`` is the ``k``-th of the autoregressive order; ``W[:, d]``, ``V[d]``,
            ``b[d]`` stay dimension ``d``'s parameters.
        check_values: ``False`` skips the check that ``order`` is a permutation (for a caller that checks its
            own buffer when it changes); shapes and dtypes are always checked.

    Returns:
        ``(logits [B, D], log_prob [B])``: ``logits[:, d]`` is dimension ``d``'s Bernoulli logit given the
        dimensions before it in the order, in the dtype of ``x``; ``log_prob = Σ_d x_d·logit_d −
        softplus(logit_d)`` in nats, float32 (float64 for float64 inputs). Differentiable in all five inputs
        (``∂log p/∂x_d`` includes the direct term ``logit_d``).

    Example:
        >>> D, H = 6, 4
        >>> W, c, V, b = torch.randn(H, D), torch.randn(H), torch.randn(D, H), torch.randn(D)
        >>> x = torch.randint(0, 2, (3, D)).float()
        >>> logits, log_prob = nade(x, W, c, V, b)
        >>> logits.shape, log_prob.shape
        (torch.Size([3, 6]), torch.Size([3]))
    """
    _check_data("x", x, "a batch of binary vectors")
    _check_parameters(W, c, V, b, x.shape[1], x, "x")
    inverse = None
    if order is not None:
        order = _order(order, x.shape[1], x.device, check_values)
        inverse = torch.argsort(order)
        x, W = x.index_select(1, order), W.index_select(1, order)
        V, b = V.index_select(0, order), b.index_select(0, order)
    if _backends.plain_reference():
        # The forced reference is the plain-PyTorch spec, differentiated by autograd (the benchmarks' baseline).
        logits, log_prob = reference.nade(x, W, c, V, b)
    else:
        logits, log_prob = NADE.call("fwd", x, W, c, V, b)
        logits = logits.to(x.dtype)
    if inverse is not None:
        logits = logits.index_select(1, inverse)
    return logits, log_prob


def nade_sample(
    W: Tensor,
    c: Tensor,
    V: Tensor,
    b: Tensor,
    u: Tensor,
    *,
    order: Tensor | Sequence[int] | None = None,
    check_values: bool = True,
) -> Tensor:
    """Ancestral samples of NADE from the caller's uniforms: ``x_d = (u_d < sigmoid(logit_d))`` in the order.

    Args:
        W, c, V, b: as in :func:`nade` (one dtype and device).
        u: ``[B, D]`` uniforms in ``[0, 1)``, any float dtype, on the parameters' device; ``u[:, d]`` decides
            dimension ``d``. The result is a deterministic function of ``u``: backends agree except where
            ``u_d`` and the probability tie to rounding.
        order, check_values: as in :func:`nade`.

    Returns:
        ``x [B, D]`` of 0/1 in the parameters' dtype. Not differentiable (computed under ``no_grad``).
    """
    hidden, dims = _check_parameters(W, c, V, b, None, None, "W")
    _check_data("u", u, "uniforms in [0, 1), one per dimension")
    if u.shape[1] != dims:
        raise ValueError(f"u must have shape (B, {dims}) for W of shape {tuple(W.shape)}, got {tuple(u.shape)}")
    if u.device != W.device:
        raise ValueError(f"u is on {u.device} but W is on {W.device}; put them on one device")
    with torch.no_grad():
        W, c, V, b, u = (t.detach() for t in (W, c, V, b, u))
        inverse = None
        if order is not None:
            order = _order(order, dims, W.device, check_values)
            inverse = torch.argsort(order)
            W, u = W.index_select(1, order), u.index_select(1, order)
            V, b = V.index_select(0, order), b.index_select(0, order)
        if _backends.plain_reference():
            x = reference.nade_sample(W, c, V, b, u)
        else:
            requested = _backends.requested()
            if requested != "auto" and not torch.compiler.is_compiling():
                # The sampler is not the op's entry stage: a forced backend that cannot run it must say so here
                # (with every backend's reason), not fail inside a kernel.
                NADE.select((W, c, V, b, u), requested, "sample")
            x = NADE.call("sample", W, c, V, b, u, backend=requested)
        if inverse is not None:
            x = x.index_select(1, inverse)
    return x
