"""Reference NADE (Larochelle & Murray, 2011) in plain PyTorch: the specification of the ``nade`` op.

For binary ``x`` ``[B, D]`` and parameters ``W`` ``[H, D]``, ``c`` ``[H]``, ``V`` ``[D, H]``, ``b`` ``[D]``::

    a_0 = c,   a_{i+1} = a_i + W[:, i]·x_i            (the running pre-activation, [B, H])
    h_i = sigmoid(a_i),   logit_i = V[i]·h_i + b[i]
    log p(x) = Σ_i x_i·logit_i − softplus(logit_i)   (nats; −BCE-with-logits summed over i)

``logit_i`` depends on ``x_0 … x_{i−1}`` only. Three forms live here:

- :func:`nade`: the specification, a Python loop over the dimensions in the input dtype (``O(B·H)`` memory
  besides autograd's), differentiated by autograd; the truth when run in float64.
- :func:`nade_materialized`: the vectorised form a user writes to avoid the loop, every ``a_i`` at once as an
  exclusive cumulative sum, ``O(B·D·H)`` memory (the benchmarks' eager baseline and its ``torch.compile``).
- :func:`nade_scan` / :func:`nade_backward` / :func:`nade_sample`: the algorithm of the fused kernels, in plain
  PyTorch (the op's reference stages): one scan over the dimensions, computed in float32 for 16-bit inputs
  (float64 for float64), the running ``a`` kept as an unevaluated sum ``hi + lo`` updated by Knuth's TwoSum
  (:func:`two_sum`), and a backward that walks the dimensions in reverse, recovering ``a_i`` from ``a_{i+1}`` by
  subtracting ``W[:, i]·x_i`` the same compensated way, starting from ``a_D = c + x·Wᵀ`` computed in float64.

Why the compensation: recovering ``a_i = a_{i+1} − W[:, i]·x_i`` by plain float32 subtraction accumulates one
rounding per step, a random walk of ``~√D·eps·|a|`` after ``D`` steps, on top of the forward's own rounding.
With ``hi + lo`` tracking the exact running sum to ``~eps²·|a|`` (TwoSum is exact: ``lo`` collects every rounding
error of ``hi``), both the forward's ``a_i`` and the backward's recovered ``a_i`` are the exact sum rounded once to
float32: the backward sees the forward's pre-activations (bit for bit but for rare ties), at any ``D``, and stores
nothing of size ``B·D·H``: the backward keeps ``O(B·H)`` state and the forward saves only the logits ``[B, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.reference.numerics import accumulation_dtype

__all__ = [
    "final_preactivation",
    "nade",
    "nade_backward",
    "nade_materialized",
    "nade_sample",
    "nade_sample_loop",
    "nade_scan",
    "two_sum",
]


def _log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """``Σ_i x_i·logit_i − softplus(logit_i)`` per row, accumulated in float32 (float64 for float64)."""
    acc = accumulation_dtype(logits.dtype)
    return -F.binary_cross_entropy_with_logits(logits.to(acc), x.to(acc), reduction="none").sum(1)


def nade(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """NADE's conditionals and log-likelihood, one dimension at a time (the specification).

    Args:
        x: ``[B, D]`` float, values 0/1 (not checked). W: ``[H, D]``; c: ``[H]``; V: ``[D, H]``; b: ``[D]``.

    Returns:
        ``(logits [B, D], log_prob [B])``: logits in the input dtype (computed in it), ``log_prob`` accumulated
        in float32 (float64 for float64 inputs).
    """
    batch, dims = x.shape
    a = c.expand(batch, -1)
    logits = []
    for i in range(dims):
        logits.append(torch.sigmoid(a) @ V[i] + b[i])
        a = a + x[:, i, None] * W[:, i]
    out = torch.stack(logits, dim=1) if logits else x.new_zeros(batch, 0)
    return out, _log_prob(out, x)


def nade_materialized(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`nade` without the Python loop: every ``a_i`` at once, ``[B, D, H]`` in memory.

    ``a_i = c + Σ_{j<i} W[:, j]·x_j`` is an exclusive cumulative sum over the dimensions; the logits are
    ``Σ_h sigmoid(a_i)_h·V[i, h] + b[i]``. ``O(B·D·H)`` memory (autograd keeps several such tensors): the form a
    user writes to trade memory for speed, and the benchmarks' eager baseline.
    """
    contributions = x[:, :-1, None] * W.t()[None, :-1]  # [B, D-1, H]: W[:, j]·x_j
    a = torch.cat([c.expand(x.shape[0], 1, -1), c + contributions.cumsum(1)], dim=1)  # [B, D, H]
    logits = torch.einsum("bdh,dh->bd", torch.sigmoid(a), V) + b
    return logits, _log_prob(logits, x)


# --------------------------------------------------------------------------------------------------
# The fused kernels' algorithm.


def two_sum(hi: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Knuth's TwoSum: ``s = fl(hi + w)`` and the exact rounding error ``e``, ``s + e = hi + w`` exactly.

    Six additions, no branch and no assumption on the magnitudes (valid barring overflow, in any binary
    floating-point type with round-to-nearest; no compiler may reassociate them, and none of fastflow's does:
    no fast-math).
    """
    s = hi + w
    w_virtual = s - hi
    hi_virtual = s - w_virtual
    return s, (hi - hi_virtual) + (w - w_virtual)


def _compensated_add(hi: Tensor, lo: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    s, e = two_sum(hi, w)
    return s, lo + e


def final_preactivation(x: Tensor, W: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``a_D = c + x·Wᵀ`` ``[B, H]`` as an unevaluated sum ``hi + lo`` in the accumulation dtype.

    Computed in float64 (one matrix product), then split: ``hi`` is ``a_D`` rounded to float32 and ``lo`` the
    rest rounded (for float64 inputs ``lo`` is zero: float64 has no wider type on every device, and its
    subtraction drift, ``~√D·1e-16`` relative, is far below anything a test or a model sees).
    """
    acc = accumulation_dtype(x.dtype)
    exact = torch.addmm(c.double()[None, :], x.double(), W.double().t())
    hi = exact.to(acc)
    return hi, (exact - hi.double()).to(acc)


def nade_scan(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The kernels' forward: :func:`nade` computed in float32 (float64 for float64 inputs) with the running
    pre-activation compensated (``hi + lo``, TwoSum). Returns ``(logits [B, D], log_prob [B])`` in the
    accumulation dtype."""
    acc = accumulation_dtype(x.dtype)
    x, W, c, V, b = (t.to(acc) for t in (x, W, c, V, b))
    batch, dims = x.shape
    hi = c.expand(batch, -1).clone()
    lo = torch.zeros_like(hi)
    logits = x.new_empty(batch, dims)
    for i in range(dims):
        logits[:, i] = torch.sigmoid(hi + lo) @ V[i] + b[i]
        hi, lo = _compensated_add(hi, lo, x[:, i, None] * W[:, i])
    return logits, _log_prob(logits, x)


def nade_backward(
    grad_logits: Tensor,
    grad_log_prob: Tensor,
    x: Tensor,
    W: Tensor,
    c: Tensor,
    V: Tensor,
    b: Tensor,
    logits: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(∂L/∂x, ∂L/∂W, ∂L/∂c, ∂L/∂V, ∂L/∂b)`` of :func:`nade` by one reverse scan.

    ``logits`` are the forward's (accumulation dtype). With ``g`` = ``grad_logits`` and ``g_p`` =
    ``grad_log_prob``, each logit's total gradient is ``δ_i = g_i + g_p·(x_i − sigmoid(logit_i))``; walking
    ``i = D−1 … 0`` with ``G = Σ_{k>i} ∂L/∂a_k`` (``[B, H]``, zero at the start) and ``a_{i+1}`` (from
    :func:`final_preactivation`):

    - ``∂L/∂W[:, i] = Σ_b x_i·G`` and ``∂L/∂x_i = g_p·logit_i + G·W[:, i]`` (``W[:, i]·x_i`` enters every later
      ``a``; ``logit_i`` is the direct term of ``x_i·logit_i``);
    - ``a_i = a_{i+1} − W[:, i]·x_i`` (compensated), ``h_i = sigmoid(a_i)``;
    - ``∂L/∂V[i] = Σ_b δ_i·h_i``, ``∂L/∂b[i] = Σ_b δ_i``, ``G += δ_i·V[i]·h_i·(1 − h_i)``;

    and ``∂L/∂c = Σ_b G`` at the end. Computed in the accumulation dtype; each gradient comes back in its
    input's dtype, contiguous.
    """
    acc = accumulation_dtype(x.dtype)
    dtypes = (x.dtype, W.dtype, c.dtype, V.dtype, b.dtype)
    hi, lo = final_preactivation(x, W, c)
    x, W, V = (t.to(acc) for t in (x, W, V))
    logits, grad_logits, grad_log_prob = logits.to(acc), grad_logits.to(acc), grad_log_prob.to(acc)
    delta = grad_logits + grad_log_prob[:, None] * (x - torch.sigmoid(logits))
    batch, dims = x.shape
    G = torch.zeros_like(hi)
    grad_x = torch.empty_like(x)
    grad_W = torch.empty_like(W)
    grad_V = torch.empty_like(V)
    for i in reversed(range(dims)):
        grad_W[:, i] = x[:, i] @ G
        grad_x[:, i] = grad_log_prob * logits[:, i] + G @ W[:, i]
        hi, lo = _compensated_add(hi, lo, -(x[:, i, None] * W[:, i]))
        h = torch.sigmoid(hi + lo)
        grad_V[i] = delta[:, i] @ h
        G = G + delta[:, i, None] * V[i] * (h * (1 - h))
    grads = (grad_x, grad_W, G.sum(0), grad_V, delta.sum(0))
    return tuple(g.to(dtype).contiguous() for g, dtype in zip(grads, dtypes, strict=True))


def nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, u: Tensor) -> Tensor:
    """Ancestral sampling with the caller's uniforms ``u`` ``[B, D]``: ``x_i = (u_i < sigmoid(logit_i))``.

    The kernels' algorithm (float32 for 16-bit parameters, float64 for float64; compensated ``a``), one
    dimension at a time; ``x`` comes back in the parameters' dtype. Deterministic given ``u``.
    """
    acc = accumulation_dtype(W.dtype)
    W32, c32, V32, b32, u32 = (t.to(acc) for t in (W, c, V, b, u))
    batch, dims = u.shape
    hi = c32.expand(batch, -1).clone()
    lo = torch.zeros_like(hi)
    x = u32.new_empty(batch, dims)
    for i in range(dims):
        p = torch.sigmoid(torch.sigmoid(hi + lo) @ V32[i] + b32[i])
        x[:, i] = (u32[:, i] < p).to(acc)
        hi, lo = _compensated_add(hi, lo, x[:, i, None] * W32[:, i])
    return x.to(W.dtype)


def nade_sample_loop(W: Tensor, c: Tensor, V: Tensor, b: Tensor, u: Tensor) -> Tensor:
    """Sampling as a user writes it: the loop of :func:`nade` in the parameters' dtype, one dimension at a time
    (the benchmarks' eager baseline)."""
    batch, dims = u.shape
    a = c.expand(batch, -1)
    columns = []
    for i in range(dims):
        x_i = (u[:, i] < torch.sigmoid(torch.sigmoid(a) @ V[i] + b[i])).to(W.dtype)
        columns.append(x_i)
        a = a + x_i[:, None] * W[:, i]
    return torch.stack(columns, dim=1) if columns else u.new_zeros(batch, 0, dtype=W.dtype)
