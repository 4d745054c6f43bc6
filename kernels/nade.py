"""Triton kernels of the fused NADE op: the forward scan (logits and log-likelihood), its reverse scan, sampling.

``fastflow.ops.nade`` dispatches here when the ``triton`` backend runs a call; the kernel contract is that
module's docstring, the math (and why the running pre-activation ``a`` is an unevaluated sum ``hi + lo`` updated
by TwoSum) is ``fastflow.reference.nade``. Everything is computed in float32; the launchers hand the kernels
``Wᵀ`` ``[D, H]`` (the column ``W[:, i]`` that step ``i`` adds is then one contiguous row), ``V``, ``c`` and ``b``
as contiguous float32 copies (``O(D·H)``, noise beside the ``O(B·D·H)`` scan); ``x`` and ``u`` are read in place
through their strides.

Forward and sampling (:func:`nade_fwd`, :func:`nade_sample`): the grid is one program per block of ``BLOCK_B``
rows of the batch (autotuned, small: the scan is sequential in ``D``, so the batch is the only parallel axis of
a logit's dot over all hidden units). A program loops over the ``D`` dimensions inside the kernel; per step it
computes ``sigmoid(a)``, its dot with ``V[i]`` (a reduction over the hidden units), the logit, and then the update
``a += W[:, i]·x_i`` (for sampling after the decision ``x_i = u_i < sigmoid(logit_i)``). When ``H`` fits one tile
(``next_power_of_2(H) ≤ _MAX_BLOCK_H``, 1024 on a GPU: ``ONE_TILE``), ``hi`` and ``lo`` stay in registers,
``[BLOCK_B, BLOCK_H]`` each; otherwise they live in a float32 scratch buffer ``[2, B, H]`` that each step sweeps
tile by tile (each program touching only its rows, a barrier between steps). Memory beyond the outputs:
``O(B·H)``.

Backward (:func:`nade_bwd`): each logit's whole gradient ``δ_i = g_i + g_p·(x_i − sigmoid(l_i))`` comes from the
saved logits (one elementwise PyTorch expression), and then the hidden units are independent: the grid is
``(H / BLOCK_H, P)``, program ``(t, p)`` owns hidden tile ``t`` and batch blocks ``p, p + P, …`` and walks
``i = D−1 … 0`` from ``a_D = c + x·Wᵀ`` (a float64 GEMM in the launcher, split into ``hi + lo``) with ``G =
Σ_{k>i} ∂L/∂a_k`` in registers. It writes its partial ``∂L/∂W``, ``∂L/∂V`` ``[P, D, H]`` (its batch blocks' sum,
the first block stored, the later ones added: each program owns its slab, so no atomics and autotuning's repeated
launches stay idempotent), ``∂L/∂c`` ``[P, H]`` and the hidden tile's part of ``∂L/∂x``'s dot ``[T, B, D]``;
``P`` depends only on the sizes and the GPU (never on the autotuned block), so one deterministic ``sum`` over
the first axis finishes each. Never a ``B·D·H`` tensor: the workspace is ``2·P·D·H + T·B·D`` floats (``T =
⌈H/32⌉``; a wider hidden tile would save ``T`` but spills registers on sm_90 from ``BLOCK_H = 64``).

FMA contraction (on by default in Triton and ptxas): the compensated sums contain no product, and the addend
``x_i·w`` is a select (``w`` where ``x_i = 1``, the binary case, else the rounded product), so no side of the
TwoSum is ever fused into an FMA with a product it would not round.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRETED, autotune_configs, sm_count

# Forward / sampling: hidden units kept in registers up to this many (padded to a power of two); beyond, the
# scratch-buffer path. Under the interpreter small, so that tests with H > 8 exercise the tiled path.
_MAX_BLOCK_H = 8 if INTERPRETED else 1024
# Backward: hidden units per program, and programs aimed for (per SM) along the batch.
_BWD_BLOCK_H = 4 if INTERPRETED else 32
_PROGRAMS_PER_SM = 4
# Backward: the smallest BLOCK_B of its configs (it bounds the number of batch programs P).
_BWD_MIN_BLOCK_B = 4 if INTERPRETED else 16


def _fwd_configs() -> list[triton.Config]:
    # Rows per program: few (the batch is the only parallel axis); warps to spread a row's hidden units.
    space = (triton.Config({"BLOCK_B": rows}, num_warps=warps) for rows, warps in ((2, 4), (1, 4), (4, 4), (4, 8)))
    return autotune_configs(space, interpreted={"BLOCK_B": 4})


def _bwd_configs() -> list[triton.Config]:
    space = (triton.Config({"BLOCK_B": rows}, num_warps=warps) for rows, warps in ((16, 2), (16, 4), (32, 4)))
    return autotune_configs(space, interpreted={"BLOCK_B": _BWD_MIN_BLOCK_B})


# --------------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def _sigmoid_parts(a):
    """``(sigmoid(a), sigmoid(a)·(1 − sigmoid(a)))`` without overflow or cancellation: with ``e = exp(−|a|)`` and
    ``r = 1/(1 + e)``, ``sigmoid = r`` (``a ≥ 0``) or ``e·r``, and its derivative ``e·r²``."""
    e = tl.exp(-tl.abs(a))
    r = 1.0 / (1.0 + e)
    return tl.where(a >= 0.0, r, e * r), e * (r * r)


@triton.jit
def _softplus(x):
    """``log(1 + exp(x)) = max(x, 0) + log1p(exp(−|x|))``, log1p by Goldberg's trick (accurate for tiny ``e``)."""
    e = tl.exp(-tl.abs(x))
    one_e = 1.0 + e
    log1p_e = tl.where(one_e == 1.0, e, tl.log(one_e) * (e / (one_e - 1.0)))
    return tl.maximum(x, 0.0) + log1p_e


@triton.jit
def _addend(x, w):
    """``x_i·w`` as ``[BLOCK_B, BLOCK_H]``: ``w`` itself where ``x_i = 1`` (no product), else the rounded product;
    a select, so that the sum it enters is never contracted into an FMA."""
    return tl.where(x[:, None] == 1.0, w[None, :], x[:, None] * w[None, :])


@triton.jit
def _compensated_add(hi, lo, w):
    """``(hi, lo) += w``: TwoSum (``s + e = hi + w`` exactly), the error collected in ``lo``."""
    s = hi + w
    w_virtual = s - hi
    e = (hi - (s - w_virtual)) + (w - w_virtual)
    return s, lo + e


# --------------------------------------------------------------------------------------------------
# Kernels.


@triton.autotune(configs=_fwd_configs(), key=["D", "H", "BLOCK_H", "ONE_TILE", "SAMPLE"])
@triton.jit
def _nade_fwd_kernel(
    x_ptr, u_ptr, wt_ptr, c_ptr, v_ptr, b_ptr,
    logits_ptr, log_prob_ptr, sample_ptr, state_ptr,
    B, D, H,
    stride_xb, stride_xd, stride_ub, stride_ud,
    SAMPLE: tl.constexpr, ONE_TILE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """One program: rows ``[pid·BLOCK_B, …)`` of the batch, all ``D`` steps.

    ``SAMPLE``: read ``u``, write the 0/1 sample (``sample_ptr``, ``[B, D]`` contiguous); else read ``x``, write
    ``logits`` (``[B, D]``) and ``log_prob`` (``[B]``), float32 contiguous. ``state`` (``[2, B, H]`` float32) is
    the scratch of ``hi`` and ``lo`` when not ``ONE_TILE``.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    H64 = H.to(tl.int64)  # step offsets i·H in int64 (the loop index is a plain int under the interpreter)
    hi_base = state_ptr + rows64[:, None] * H64
    lo_base = hi_base + B.to(tl.int64) * H64
    if ONE_TILE:
        col_ok = cols < H
        hi = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32) + tl.load(c_ptr + cols, mask=col_ok, other=0.0)[None, :]
        lo = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    else:
        for h0 in range(0, H, BLOCK_H):
            hcols = h0 + cols
            mask = row_ok[:, None] & (hcols < H)[None, :]
            init = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32) + tl.load(c_ptr + hcols, mask=hcols < H,
                                                                            other=0.0)[None, :]
            tl.store(hi_base + hcols[None, :], init, mask=mask)
            tl.store(lo_base + hcols[None, :], tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32), mask=mask)
        tl.debug_barrier()
    log_prob = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for i in range(0, D):
        row_i = i * H64
        if not SAMPLE:
            x = tl.load(x_ptr + rows64 * stride_xb + i * stride_xd, mask=row_ok, other=0.0).to(tl.float32)
        if ONE_TILE:
            v = tl.load(v_ptr + row_i + cols, mask=col_ok, other=0.0)
            h, _ = _sigmoid_parts(hi + lo)
            logit = tl.sum(h * v[None, :], axis=1) + tl.load(b_ptr + i)
            if SAMPLE:
                u = tl.load(u_ptr + rows64 * stride_ub + i * stride_ud, mask=row_ok, other=1.0).to(tl.float32)
                p, _ = _sigmoid_parts(logit)
                x = tl.where(u < p, 1.0, 0.0)
            w = tl.load(wt_ptr + row_i + cols, mask=col_ok, other=0.0)
            hi, lo = _compensated_add(hi, lo, _addend(x, w))
        else:
            acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for h0 in range(0, H, BLOCK_H):
                hcols = h0 + cols
                col_ok = hcols < H
                mask = row_ok[:, None] & col_ok[None, :]
                hi_t = tl.load(hi_base + hcols[None, :], mask=mask, other=0.0)
                lo_t = tl.load(lo_base + hcols[None, :], mask=mask, other=0.0)
                v = tl.load(v_ptr + row_i + hcols, mask=col_ok, other=0.0)
                h, _ = _sigmoid_parts(hi_t + lo_t)
                acc += tl.sum(h * v[None, :], axis=1)
                if not SAMPLE:
                    # x_i is known: the update goes in the same sweep.
                    w = tl.load(wt_ptr + row_i + hcols, mask=col_ok, other=0.0)
                    hi_t, lo_t = _compensated_add(hi_t, lo_t, _addend(x, w))
                    tl.store(hi_base + hcols[None, :], hi_t, mask=mask)
                    tl.store(lo_base + hcols[None, :], lo_t, mask=mask)
            logit = acc + tl.load(b_ptr + i)
            if SAMPLE:
                u = tl.load(u_ptr + rows64 * stride_ub + i * stride_ud, mask=row_ok, other=1.0).to(tl.float32)
                p, _ = _sigmoid_parts(logit)
                x = tl.where(u < p, 1.0, 0.0)
                for h0 in range(0, H, BLOCK_H):
                    hcols = h0 + cols
                    col_ok = hcols < H
                    mask = row_ok[:, None] & col_ok[None, :]
                    hi_t = tl.load(hi_base + hcols[None, :], mask=mask, other=0.0)
                    lo_t = tl.load(lo_base + hcols[None, :], mask=mask, other=0.0)
                    w = tl.load(wt_ptr + row_i + hcols, mask=col_ok, other=0.0)
                    hi_t, lo_t = _compensated_add(hi_t, lo_t, _addend(x, w))
                    tl.store(hi_base + hcols[None, :], hi_t, mask=mask)
                    tl.store(lo_base + hcols[None, :], lo_t, mask=mask)
            # The next step reads what other threads of this program wrote.
            tl.debug_barrier()
        if SAMPLE:
            tl.store(sample_ptr + rows64 * D + i, x, mask=row_ok)
        else:
            tl.store(logits_ptr + rows64 * D + i, logit, mask=row_ok)
            log_prob += x * logit - _softplus(logit)
    if not SAMPLE:
        tl.store(log_prob_ptr + rows64, log_prob, mask=row_ok)


@triton.autotune(configs=_bwd_configs(), key=["B", "D", "H", "BLOCK_H"])
@triton.jit
def _nade_bwd_kernel(
    x_ptr, delta_ptr, wt_ptr, v_ptr, hi0_ptr, lo0_ptr,
    gw_ptr, gv_ptr, gc_ptr, gx_ptr,
    B, D, H,
    stride_xb, stride_xd,
    BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Program ``(t, p)``: hidden units ``[t·BLOCK_H, …)``, batch blocks ``p, p + P, …``, steps ``D−1 … 0``.

    ``delta`` ``[B, D]``, ``hi0``/``lo0`` ``[B, H]`` (``a_D``) float32 contiguous. Writes ``gw``/``gv``
    ``[P, D, H]`` (``∂L/∂Wᵀ`` and ``∂L/∂V``, this program's slab), ``gc`` ``[P, H]``, ``gx`` ``[T, B, D]`` (the
    tile's part of ``G·W[:, i]``); a program with no batch block leaves its slabs as they are (zeros).
    """
    tile = tl.program_id(0)
    first = tl.program_id(1)
    programs = tl.num_programs(1)
    cols = tile * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    H64 = H.to(tl.int64)
    part = first.to(tl.int64) * D * H64
    gc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for block in range(first, tl.cdiv(B, BLOCK_B), programs):
        rows = block * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        rows64 = rows.to(tl.int64)
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = rows64[:, None] * H + cols[None, :]
        hi = tl.load(hi0_ptr + offsets, mask=mask, other=0.0)
        lo = tl.load(lo0_ptr + offsets, mask=mask, other=0.0)
        G = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        # The program's first block stores its partial sums, later ones add to them. An int1 mask built by a
        # comparison: newer Triton interpreters make `bool tensor & scalar` an int32 tensor, which tl.load refuses.
        later = (block != first).to(tl.int32)
        for k in range(0, D):
            i = D - 1 - k
            row_i = i * H64
            x = tl.load(x_ptr + rows64 * stride_xb + i * stride_xd, mask=row_ok, other=0.0).to(tl.float32)
            delta = tl.load(delta_ptr + rows64 * D + i, mask=row_ok, other=0.0)
            w = tl.load(wt_ptr + row_i + cols, mask=col_ok, other=0.0)
            v = tl.load(v_ptr + row_i + cols, mask=col_ok, other=0.0)
            # G is Σ_{k>i} ∂L/∂a_k here: W[:, i]·x_i enters every a after step i.
            gw = tl.sum(x[:, None] * G, axis=0)
            tl.store(gx_ptr + (tile.to(tl.int64) * B + rows64) * D + i, tl.sum(G * w[None, :], axis=1), mask=row_ok)
            hi, lo = _compensated_add(hi, lo, -_addend(x, w))  # a_{i+1} -> a_i
            h, dh = _sigmoid_parts(hi + lo)
            gv = tl.sum(delta[:, None] * h, axis=0)
            G += delta[:, None] * v[None, :] * dh
            slab = part + row_i + cols
            gw += tl.load(gw_ptr + slab, mask=(col_ok.to(tl.int32) * later) != 0, other=0.0)
            gv += tl.load(gv_ptr + slab, mask=(col_ok.to(tl.int32) * later) != 0, other=0.0)
            tl.store(gw_ptr + slab, gw, mask=col_ok)
            tl.store(gv_ptr + slab, gv, mask=col_ok)
        gc += tl.sum(G, axis=0)
        # The next block reads the partial sums other threads of this program wrote.
        tl.debug_barrier()
    tl.store(gc_ptr + first.to(tl.int64) * H + cols, gc, mask=col_ok)


# --------------------------------------------------------------------------------------------------
# Host side.


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _parameters(W, c, V, b):
    """``Wᵀ``, ``c``, ``V``, ``b`` as contiguous float32 (``Wᵀ`` ``[D, H]``: step ``i`` reads one row)."""
    return _f32(W.t()), _f32(c), _f32(V), _f32(b)


def _forward_layout(hidden: int) -> tuple[int, bool]:
    block_h = triton.next_power_of_2(hidden)
    one_tile = block_h <= _MAX_BLOCK_H
    return min(block_h, _MAX_BLOCK_H), one_tile


def _scan(data, W, c, V, b, sample: bool):
    """The forward kernel over ``data`` (``x``, or ``u`` when ``sample``): ``(logits, log_prob)`` or the sample."""
    batch, dims = data.shape
    hidden = W.shape[0]
    device = data.device
    wt, c32, v32, b32 = _parameters(W, c, V, b)
    block_h, one_tile = _forward_layout(hidden)
    logits = torch.empty((batch, dims), dtype=torch.float32, device=device)
    log_prob = torch.empty((0 if sample else batch,), dtype=torch.float32, device=device)
    if batch == 0:
        return logits if sample else (logits, log_prob)
    # Without ONE_TILE the running a lives here; with it, a placeholder that is never read.
    state = torch.empty((2, batch, hidden) if not one_tile else (1,), dtype=torch.float32, device=device)
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)  # noqa: E731
    # x_ptr and u_ptr are both data: the kernel reads the one SAMPLE says; the sample goes where logits would.
    _nade_fwd_kernel[grid](
        data, data, wt, c32, v32, b32,
        logits, log_prob, logits, state,
        batch, dims, hidden,
        data.stride(0), data.stride(1), data.stride(0), data.stride(1),
        SAMPLE=sample, ONE_TILE=one_tile, BLOCK_H=block_h,
    )
    return logits if sample else (logits, log_prob)


def nade_fwd(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor):
    """``(logits [B, D], log_prob [B])``, float32 contiguous, of ``x`` ``[B, D]`` (any strides) under ``W``
    ``[H, D]``, ``c`` ``[H]``, ``V`` ``[D, H]``, ``b`` ``[D]`` (one float dtype)."""
    return _scan(x, W, c, V, b, sample=False)


def nade_sample(W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x [B, D]`` with ``x_i = (u_i < sigmoid(logit_i))``, in the dtype of ``W``; ``u`` any strides and float
    dtype (compared in float32)."""
    return _scan(u, W, c, V, b, sample=True).to(W.dtype)


def _batch_programs(batch: int, tiles: int, device: torch.device) -> int:
    """``P``: programs along the batch, from the sizes and the GPU only (not the autotuned ``BLOCK_B``)."""
    wanted = triton.cdiv(sm_count(device) * _PROGRAMS_PER_SM, tiles)
    return max(1, min(wanted, triton.cdiv(batch, _BWD_MIN_BLOCK_B)))


def nade_bwd(
    grad_logits: torch.Tensor,
    grad_log_prob: torch.Tensor,
    x: torch.Tensor,
    W: torch.Tensor,
    c: torch.Tensor,
    V: torch.Tensor,
    b: torch.Tensor,
    logits: torch.Tensor,
):
    """``(grad_x, grad_W, grad_c, grad_V, grad_b)`` in their inputs' dtypes, contiguous; ``logits`` are the
    forward's (float32), the gradients any strides and float dtype."""
    batch, dims = x.shape
    hidden = W.shape[0]
    device = x.device
    if batch == 0:
        zeros = [torch.zeros(t.shape, dtype=t.dtype, device=device) for t in (W, c, V, b)]
        return (torch.empty((0, dims), dtype=x.dtype, device=device), *zeros)
    wt, _, v32, _ = _parameters(W, c, V, b)
    logits32 = logits.to(torch.float32)
    grad_log_prob32 = grad_log_prob.to(torch.float32)
    x32 = x.to(torch.float32)
    delta = (grad_logits.to(torch.float32) + grad_log_prob32[:, None] * (x32 - torch.sigmoid(logits32))).contiguous()
    # a_D = c + x·Wᵀ in float64, split into hi + lo: where the reverse scan starts.
    exact = torch.addmm(c.double()[None, :], x.double(), W.double().t())
    hi0 = exact.to(torch.float32)
    lo0 = (exact - hi0.double()).to(torch.float32)
    tiles = triton.cdiv(hidden, _BWD_BLOCK_H)
    programs = _batch_programs(batch, tiles, device)
    gw = torch.zeros((programs, dims, hidden), dtype=torch.float32, device=device)
    gv = torch.zeros((programs, dims, hidden), dtype=torch.float32, device=device)
    gc = torch.empty((programs, hidden), dtype=torch.float32, device=device)
    gx = torch.empty((tiles, batch, dims), dtype=torch.float32, device=device)
    _nade_bwd_kernel[(tiles, programs)](
        x, delta, wt, v32, hi0, lo0,
        gw, gv, gc, gx,
        batch, dims, hidden,
        x.stride(0), x.stride(1),
        BLOCK_H=_BWD_BLOCK_H,
    )
    grad_x = (gx.sum(0) + grad_log_prob32[:, None] * logits32).to(x.dtype)
    grad_W = gw.sum(0).t().to(W.dtype).contiguous()
    return (
        grad_x.contiguous(),
        grad_W,
        gc.sum(0).to(c.dtype),
        gv.sum(0).to(V.dtype),
        delta.sum(0).to(b.dtype),
    )
