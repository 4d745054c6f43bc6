"""Triton kernels of the fused coupling op: affine / additive coupling, its inverse and its backward.

``fastflow.ops.coupling`` dispatches here when the ``triton`` backend runs a call; the kernel contract (the
canonical ``[B, C, H, W]`` layout, the masks, the outputs) is that module's docstring, the math is
``fastflow.reference.coupling``, and the integer codes of the mask and the scale are ``fastflow._codes`` (the
kernels compare their ``MASK`` / ``SCALE`` constexprs with the same values). One pass over memory does everything:

- forward / inverse (:func:`coupling_fwd`): ``y_b = x_b · s(h_s) + h_t`` or ``x_b = (y_b − h_t) / s(h_s)``,
  the copy of the pass-through part ``y_a = x_a``, and ``log|det J| = ±Σ log s(h_s)`` per sample;
- backward (:func:`coupling_bwd`): ``∂L/∂x``, ``∂L/∂h_s``, ``∂L/∂h_t`` from the saved ``z`` and ``h_s``
  alone.

Layout of the work. Per sample, the transformed elements form a ``[C', H', W']`` index space (the
transformed half ``[C/2, H, W]`` for the channel mask, the whole ``[C, H, W]`` for the checkerboard). The
launcher merges adjacent dimensions that every operand walks contiguously (``[B, C/2, H, W]`` views with
contiguous ``H, W`` become ``[B, C/2, H·W]``, vectors ``[B, D, 1, 1]`` become ``[B, 1, 1, D]``), so that the
last dimension is long and unit-stride whenever the operands allow it. The kernels see ``rows = C'·H'`` by
``cols = W'`` and work on tiles of ``TILE`` elements, in one of two shapes:

- 2-D, ``[TILE / BLOCK_W, BLOCK_W]`` with ``BLOCK_W ≤ 512`` (the next power of two of ``cols``): row indices
  are split into ``(c, h)`` once per row, never per element, and columns are the contiguous axis (128-bit
  loads when the stride is 1);
- 1-D, ``[TILE]`` along the columns (``FLAT``), when everything collapsed into one row (``rows = 1``):
  ``[B, D]`` vectors (either mask, any feature stride), and images whose channel-mask halves are one
  evenly strided run per sample in every operand (``h.chunk(2, 1)`` views of a conditioner's output,
  contiguous ``h_s`` / ``h_t``). A 2-D tile would mask off all its rows but one there.

The grid is ``(B, P)``: ``P`` programs per sample, each looping over a contiguous run of tiles of its sample.
``P`` depends only on the sizes and the GPU (not on the autotuned ``TILE`` nor on the tile shape), so each
program writes one float32 partial sum of ``log s`` to a ``[B, P]`` buffer, reduced by one deterministic
``sum`` (no atomics; when ``P = 1`` the buffer *is* the log-determinant; a program whose run is empty writes
0). For the channel mask a tile of the transformed half and the tile at the same place in the pass-through
half are handled by the same program, so the copy costs exactly the bytes it moves; for the checkerboard both
parities share the tile, selected with ``tl.where``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow import _codes

from ._common import INTERPRETED, autotune_configs, sm_count

# The shared codes, as constexprs the kernels compare with their MASK / SCALE arguments (compile-time branches).
_MASK_CHANNEL = tl.constexpr(_codes.MASK_CHANNEL)
_SCALE_SIGMOID = tl.constexpr(_codes.SCALE_SIGMOID)
_SCALE_ADDITIVE = tl.constexpr(_codes.SCALE_ADDITIVE)

# Programs per sample. Normally one program per _ELEMENTS_PER_PROGRAM elements (the largest TILE): many short
# programs let the hardware balance the SMs (a few long ones leave a partial last wave), and the [B, P]
# partial sums stay ~1/1000 of the traffic. Small inputs are spread thinner, down to the smallest TILE per
# program, until there are _MIN_PROGRAMS_PER_SM programs per SM. Under the interpreter, tiny tiles and
# several programs per sample exercise the multi-tile, multi-program paths on small inputs.
_ELEMENTS_PER_PROGRAM = 128 if INTERPRETED else 4096
_MIN_ELEMENTS_PER_PROGRAM = 32 if INTERPRETED else 1024
_MIN_PROGRAMS_PER_SM = 4
_MAX_PROGRAMS = 65535  # the grid's second dimension
_MAX_BLOCK_W = 8 if INTERPRETED else 512  # must not exceed the smallest TILE of _configs()


def _configs() -> list[triton.Config]:
    """Autotuning space: elements per tile and warps per program (one small config under the interpreter)."""
    # 8 to 16 elements per thread: 60-160 registers (sm_90), no spills; 32 per thread spills.
    space = (
        triton.Config({"TILE": tile}, num_warps=warps)
        for tile, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16))
    )
    return autotune_configs(space, interpreted={"TILE": 32})


# --------------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def _expm1(x):
    """``exp(x) − 1`` in float32, accurate to a few ulps relative, for ``x ≤ 88`` (where ``exp`` is finite).

    ``|x| < 1``: the Taylor polynomial to degree 10 (truncation < 2.6e-8 relative), Horner in multiplies and adds
    only, which every target rounds exactly (IEEE). Elsewhere ``exp(x) − 1``, whose subtraction magnifies the
    error of ``exp`` at most ``e/(e − 1) ≈ 1.6`` times. Not Kahan's ``(u − 1)·x/log u``: it is exact only with a
    log accurate near 1, which Triton does not promise (``tl.log`` may lower to the GPU's approximate ``lg2``,
    absolute error ~2⁻²²: relative ~1e-3 at ``x = 1e-4``); ``tl.exp`` is approximate on GPUs too (``ex2``, ~2
    ulps), which the polynomial never calls and the large branch tolerates.
    """
    p = 1.0 / 3628800.0
    p = p * x + 1.0 / 362880.0
    p = p * x + 1.0 / 40320.0
    p = p * x + 1.0 / 5040.0
    p = p * x + 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    small = x + (x * x) * p
    return tl.where(tl.abs(x) < 1.0, small, tl.exp(x) - 1.0)


@triton.jit
def _scale_terms(raw, clamp, SCALE: tl.constexpr):
    """``(log s, s, 1/s, ∂log s/∂h)`` of ``h = raw`` in float32, without overflow or cancellation.

    sigmoid: ``u = h + 2``, ``e = exp(−|u|) ∈ (0, 1]``; ``log s = min(u, 0) − log1p(e)``, and ``s``, ``1/s``,
    ``1 − s = sigmoid(−u)`` are all ratios of ``e`` and ``1 + e``.
    exp: ``a = h/c``, ``E = expm1(2|a|)`` (``|a|`` clamped to 20: ``E`` stays finite, ``tanh`` is 1 to float32
    long before); ``log s = c·sign(a)·tanh|a|`` with ``tanh|a| = E/(E + 2)``, and ``∂log s/∂h = 1 − tanh² a =
    4(E + 1)/(E + 2)²``: no cancellation for small ``|a|`` (``1 − exp(−2|a|)`` would lose ``log₁₀(1/|a|)``
    digits) nor near saturation (``1 − tanh²``). The C++ and CUDA kernels use the same form.
    """
    if SCALE == _SCALE_SIGMOID:
        u = raw + 2.0
        e = tl.exp(-tl.abs(u))
        one_e = 1.0 + e
        # log1p(e) accurate for tiny e (Goldberg's trick: the rounding of 1 + e cancels in the ratio).
        log1p_e = tl.where(one_e == 1.0, e, tl.log(one_e) * (e / (one_e - 1.0)))
        log_s = tl.minimum(u, 0.0) - log1p_e
        recip = 1.0 / one_e
        positive = u >= 0.0
        s = tl.where(positive, recip, e * recip)
        inv_s = tl.where(positive, one_e, one_e / e)
        dlog_s = tl.where(positive, e * recip, recip)
    else:
        a = raw / clamp
        # NaN propagates through the clamp (a NaN h_s must show in y and log|det J|, not become ±c).
        big_e = _expm1(2.0 * tl.minimum(tl.abs(a), 20.0, propagate_nan=tl.PropagateNan.ALL))
        recip = 1.0 / (big_e + 2.0)
        tanh_abs = big_e * recip
        log_s = clamp * tl.where(a >= 0.0, tanh_abs, -tanh_abs)
        s = tl.exp(log_s)
        inv_s = tl.exp(-log_s)
        # (4(E + 1)·r)·r, not 4(E + 1)·r²: r² underflows for |a| near the clamp.
        dlog_s = (4.0 * (big_e + 1.0) * recip) * recip
    return log_s, s, inv_s, dlog_s


@triton.jit
def _tile_coords(tile, n_rows, rows_h, n_cols, FLAT: tl.constexpr, TILE_R: tl.constexpr, TILE_W: tl.constexpr):
    """Row split ``(c, h)``, column ``w`` (int64, for offsets), parity ``(h + w) mod 2``, bounds mask.

    2-D tiles: ``c``, ``h`` are ``[TILE_R]``, ``w`` is ``[TILE_W]``, parity and mask ``[TILE_R, TILE_W]``.
    ``FLAT``: everything is ``[TILE_W]`` (one row: ``c = h = 0``).
    """
    if FLAT:
        cols = tile * TILE_W + tl.arange(0, TILE_W)
        in_bounds = cols < n_cols
        parity = cols % 2
        w = cols.to(tl.int64)
        c = tl.zeros((TILE_W,), dtype=tl.int64)
        h = c
    else:
        tiles_w = tl.cdiv(n_cols, TILE_W)
        tile_r = tile // tiles_w
        tile_w = tile - tile_r * tiles_w
        rows = tile_r * TILE_R + tl.arange(0, TILE_R)
        cols = tile_w * TILE_W + tl.arange(0, TILE_W)
        row_c = rows // rows_h
        row_h = rows - row_c * rows_h
        in_bounds = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        parity = (row_h[:, None] + cols[None, :]) % 2
        c = row_c.to(tl.int64)
        h = row_h.to(tl.int64)
        w = cols.to(tl.int64)
    return c, h, w, parity, in_bounds


@triton.jit
def _offsets(c, h, w, stride_c, stride_h, stride_w, FLAT: tl.constexpr):
    """int64 element offsets within one sample: ``[TILE_R, TILE_W]`` (the row part computed once per row), or
    ``[TILE_W]`` when ``FLAT``."""
    if FLAT:
        offsets = w * stride_w
    else:
        offsets = (c * stride_c + h * stride_h)[:, None] + (w * stride_w)[None, :]
    return offsets


@triton.jit
def _tile_range(n_rows, n_cols, TILE_R: tl.constexpr, TILE_W: tl.constexpr):
    """The contiguous run ``[first, last)`` of tiles of this program within its sample (empty past the end)."""
    n_tiles = tl.cdiv(n_rows, TILE_R) * tl.cdiv(n_cols, TILE_W)
    per_program = tl.cdiv(n_tiles, tl.num_programs(1))
    first = tl.program_id(1) * per_program
    last = tl.minimum(first + per_program, n_tiles)
    return first, last


# --------------------------------------------------------------------------------------------------
# Kernels.


@triton.autotune(configs=_configs(), key=["n_rows", "n_cols", "BLOCK_W", "FLAT", "MASK", "SCALE", "INVERSE"])
@triton.jit
def _coupling_fwd_kernel(
    x_ptr, raw_ptr, shift_ptr, y_ptr, partial_ptr,
    x_off_t, x_off_p, y_off_t, y_off_p,
    n_rows, rows_h, n_cols, clamp,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_rb, stride_rc, stride_rh, stride_rw,
    stride_tb, stride_tc, stride_th, stride_tw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    MASK: tl.constexpr, SCALE: tl.constexpr, PARITY: tl.constexpr, INVERSE: tl.constexpr,
    BLOCK_W: tl.constexpr, FLAT: tl.constexpr, TILE: tl.constexpr,
):
    """One program: a run of tiles of sample ``b``; writes ``y`` there and one partial ``Σ ±log s``.

    ``x``, ``raw`` (``h_s``), ``shift`` (``h_t``) and ``y`` are ``[B, C', H', W']`` strided views
    (``x_off_*``, ``y_off_*``: element offsets of the transformed ``t`` and pass-through ``p`` halves of the
    channel mask).
    ``partial`` is ``[B, P]`` float32, contiguous. Tiles are ``[TILE / BLOCK_W, BLOCK_W]``, or ``[TILE]`` when
    ``FLAT`` (then ``n_rows = 1``).
    """
    if FLAT:
        TILE_W: tl.constexpr = TILE
    else:
        TILE_W: tl.constexpr = BLOCK_W
    TILE_R: tl.constexpr = TILE // TILE_W
    b = tl.program_id(0).to(tl.int64)
    x_base = x_ptr + b * stride_xb
    raw_base = raw_ptr + b * stride_rb
    shift_base = shift_ptr + b * stride_tb
    y_base = y_ptr + b * stride_yb
    first, last = _tile_range(n_rows, n_cols, TILE_R, TILE_W)
    if FLAT:
        acc = tl.zeros((TILE_W,), dtype=tl.float32)
    else:
        acc = tl.zeros((TILE_R, TILE_W), dtype=tl.float32)
    for tile in range(first, last):
        c, h, w, parity, in_bounds = _tile_coords(tile, n_rows, rows_h, n_cols, FLAT, TILE_R, TILE_W)
        offs_x = _offsets(c, h, w, stride_xc, stride_xh, stride_xw, FLAT)
        offs_y = _offsets(c, h, w, stride_yc, stride_yh, stride_yw, FLAT)
        x = tl.load(x_base + x_off_t + offs_x, mask=in_bounds, other=0.0).to(tl.float32)
        offs_t = _offsets(c, h, w, stride_tc, stride_th, stride_tw, FLAT)
        t = tl.load(shift_base + offs_t, mask=in_bounds, other=0.0).to(tl.float32)
        if SCALE == _SCALE_ADDITIVE:
            if INVERSE:
                y = x - t
            else:
                y = x + t
        else:
            offs_r = _offsets(c, h, w, stride_rc, stride_rh, stride_rw, FLAT)
            raw = tl.load(raw_base + offs_r, mask=in_bounds, other=0.0).to(tl.float32)
            log_s, s, inv_s, _ = _scale_terms(raw, clamp, SCALE)
            if INVERSE:
                y = (x - t) * inv_s
            else:
                y = x * s + t
        if MASK == _MASK_CHANNEL:
            tl.store(y_base + y_off_t + offs_y, y.to(y_ptr.dtype.element_ty), mask=in_bounds)
            # The pass-through half at the same (c, h, w): read once, written once.
            x_pass = tl.load(x_base + x_off_p + offs_x, mask=in_bounds, other=0.0)
            tl.store(y_base + y_off_p + offs_y, x_pass.to(y_ptr.dtype.element_ty), mask=in_bounds)
            transformed = in_bounds
        else:
            # raw and shift are read at every position (vectorised, and DRAM moves whole sectors anyway);
            # their pass-through values, possibly garbage, are discarded by the selects.
            transformed = in_bounds & (parity == PARITY)
            y = tl.where(transformed, y, x)
            tl.store(y_base + offs_y, y.to(y_ptr.dtype.element_ty), mask=in_bounds)
        if SCALE != _SCALE_ADDITIVE:
            acc += tl.where(transformed, log_s, 0.0)
    if SCALE != _SCALE_ADDITIVE:
        logdet = tl.sum(acc)
        if INVERSE:
            logdet = -logdet
        tl.store(partial_ptr + b * tl.num_programs(1) + tl.program_id(1), logdet)


@triton.autotune(configs=_configs(), key=["n_rows", "n_cols", "BLOCK_W", "FLAT", "MASK", "SCALE", "INVERSE"])
@triton.jit
def _coupling_bwd_kernel(
    g_ptr, z_ptr, raw_ptr, glogdet_ptr, gx_ptr, graw_ptr, gshift_ptr,
    g_off_t, g_off_p, z_off_t, gx_off_t, gx_off_p,
    n_rows, rows_h, n_cols, clamp, stride_gl,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_zb, stride_zc, stride_zh, stride_zw,
    stride_rb, stride_rc, stride_rh, stride_rw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_pb, stride_pc, stride_ph, stride_pw,
    MASK: tl.constexpr, SCALE: tl.constexpr, PARITY: tl.constexpr, INVERSE: tl.constexpr,
    BLOCK_W: tl.constexpr, FLAT: tl.constexpr, TILE: tl.constexpr,
):
    """One program: a run of tiles of sample ``b``; writes ``∂L/∂x``, ``∂L/∂h_s``, ``∂L/∂h_t`` there.

    ``g`` (``∂L/∂y``), ``z`` and ``raw`` are strided views as in the forward kernel; ``gx`` has the strides
    ``stride_x*`` and ``graw``, ``gshift`` share ``stride_p*``. ``glogdet`` is ``[B]`` (stride ``stride_gl``).
    Tiles as in the forward kernel.
    """
    if FLAT:
        TILE_W: tl.constexpr = TILE
    else:
        TILE_W: tl.constexpr = BLOCK_W
    TILE_R: tl.constexpr = TILE // TILE_W
    b = tl.program_id(0).to(tl.int64)
    g_base = g_ptr + b * stride_gb
    z_base = z_ptr + b * stride_zb
    raw_base = raw_ptr + b * stride_rb
    gx_base = gx_ptr + b * stride_xb
    graw_base = graw_ptr + b * stride_pb
    gshift_base = gshift_ptr + b * stride_pb
    glogdet = tl.load(glogdet_ptr + b * stride_gl).to(tl.float32)
    first, last = _tile_range(n_rows, n_cols, TILE_R, TILE_W)
    for tile in range(first, last):
        c, h, w, parity, in_bounds = _tile_coords(tile, n_rows, rows_h, n_cols, FLAT, TILE_R, TILE_W)
        offs_g = _offsets(c, h, w, stride_gc, stride_gh, stride_gw, FLAT)
        offs_x = _offsets(c, h, w, stride_xc, stride_xh, stride_xw, FLAT)
        offs_p = _offsets(c, h, w, stride_pc, stride_ph, stride_pw, FLAT)
        g = tl.load(g_base + g_off_t + offs_g, mask=in_bounds, other=0.0).to(tl.float32)
        offs_z = _offsets(c, h, w, stride_zc, stride_zh, stride_zw, FLAT)
        offs_r = _offsets(c, h, w, stride_rc, stride_rh, stride_rw, FLAT)
        z = tl.load(z_base + z_off_t + offs_z, mask=in_bounds, other=0.0).to(tl.float32)
        raw = tl.load(raw_base + offs_r, mask=in_bounds, other=0.0).to(tl.float32)
        _, s, inv_s, dlog_s = _scale_terms(raw, clamp, SCALE)
        if INVERSE:
            gx = g * inv_s
            graw = -dlog_s * (g * z + glogdet)
            gshift = -gx
        else:
            gx = g * s
            graw = dlog_s * (g * z * s + glogdet)
            gshift = g
        if MASK == _MASK_CHANNEL:
            tl.store(gx_base + gx_off_t + offs_x, gx.to(gx_ptr.dtype.element_ty), mask=in_bounds)
            g_pass = tl.load(g_base + g_off_p + offs_g, mask=in_bounds, other=0.0)
            tl.store(gx_base + gx_off_p + offs_x, g_pass.to(gx_ptr.dtype.element_ty), mask=in_bounds)
        else:
            transformed = parity == PARITY
            gx = tl.where(transformed, gx, g)
            graw = tl.where(transformed, graw, 0.0)
            gshift = tl.where(transformed, gshift, 0.0)
            tl.store(gx_base + offs_x, gx.to(gx_ptr.dtype.element_ty), mask=in_bounds)
        tl.store(graw_base + offs_p, graw.to(graw_ptr.dtype.element_ty), mask=in_bounds)
        tl.store(gshift_base + offs_p, gshift.to(gshift_ptr.dtype.element_ty), mask=in_bounds)


# --------------------------------------------------------------------------------------------------
# Host side.


def _programs_per_sample(elements: int, batch: int, device: torch.device) -> int:
    """``P``: programs per sample for ``elements`` transformed positions per sample (see the constants)."""
    min_programs = sm_count(device) * _MIN_PROGRAMS_PER_SM
    programs = triton.cdiv(elements, _ELEMENTS_PER_PROGRAM)
    if batch * programs < min_programs:
        programs = min(triton.cdiv(min_programs, batch), triton.cdiv(elements, _MIN_ELEMENTS_PER_PROGRAM))
    return max(1, min(programs, _MAX_PROGRAMS))


def _collapse(sizes: tuple[int, int, int], strides: list[tuple[int, int, int]]):
    """Merge adjacent per-sample dimensions that every operand walks as one (``stride_i = size_j·stride_j``).

    Args:
        sizes: the per-sample ``(C', H', W')``.
        strides: for each operand, its ``(stride_c, stride_h, stride_w)`` over those sizes.

    Returns:
        ``(sizes, strides)`` in the same form, three dimensions, leading ones padded with size 1; the last
        dimension is as long as the operands' common contiguity allows.
    """
    dims = [(size, [s[i] for s in strides]) for i, size in enumerate(sizes) if size != 1]
    merged: list[tuple[int, list[int]]] = []
    for size, inner in dims:
        if merged and all(outer == size * stride for outer, stride in zip(merged[-1][1], inner, strict=True)):
            merged[-1] = (merged[-1][0] * size, inner)
        else:
            merged.append((size, inner))
    while len(merged) < 3:
        merged.insert(0, (1, [0] * len(strides)))
    new_sizes = tuple(size for size, _ in merged)
    new_strides = [tuple(dim[1][k] for dim in merged) for k in range(len(strides))]
    return new_sizes, new_strides


def _layout(reference: torch.Tensor, operands: list[torch.Tensor], mask: int):
    """Per-sample index space ``(C', H', W')`` and each operand's strides over it (merged: channel mask).

    For the channel mask the operands are addressed over the transformed half ``[C/2, H, W]`` (the half's
    channel offset is added separately); the checkerboard keeps ``H`` and ``W`` apart for the parity.
    """
    _, channels, height, width = reference.shape
    if mask == _codes.MASK_CHANNEL:
        sizes = (channels // 2, height, width)
        return _collapse(sizes, [tuple(t.stride()[1:]) for t in operands])
    return (channels, height, width), [tuple(t.stride()[1:]) for t in operands]


def _launch_shape(sizes: tuple[int, int, int], batch: int, device: torch.device):
    """``(n_rows, rows_h, n_cols, BLOCK_W, FLAT, P)`` for a per-sample ``(C', H', W')``.

    ``FLAT`` (one row): 1-D tiles of the whole ``TILE``; ``BLOCK_W`` is then unused and fixed, so that it adds
    no compiled variant.
    """
    n_rows, rows_h, n_cols = sizes[0] * sizes[1], sizes[1], sizes[2]
    flat = n_rows == 1
    block_w = _MAX_BLOCK_W if flat else min(triton.next_power_of_2(n_cols), _MAX_BLOCK_W)
    programs = _programs_per_sample(n_rows * n_cols, batch, device)
    return n_rows, rows_h, n_cols, block_w, flat, programs


def _halves(mask: int, channels: int, flip: bool) -> tuple[int, int]:
    """First channel of the transformed and of the pass-through half (both 0 for the checkerboard)."""
    if mask != _codes.MASK_CHANNEL:
        return 0, 0
    half = channels // 2
    return (0, half) if flip else (half, 0)


def _check(mask: int, scale: int) -> None:
    if mask not in _codes.MASK_NAMES:
        codes = ", ".join(f"{code} ({name})" for code, name in _codes.MASK_NAMES.items())
        raise ValueError(f"mask must be one of {codes}, got {mask}")
    if scale not in _codes.SCALE_NAMES:
        codes = ", ".join(f"{code} ({name})" for code, name in _codes.SCALE_NAMES.items())
        raise ValueError(f"scale must be one of {codes}, got {scale}")


def coupling_fwd(
    x: torch.Tensor,
    raw_scale: torch.Tensor | None,
    shift: torch.Tensor,
    mask: int,
    scale: int,
    flip: bool,
    inverse: bool,
    clamp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coupling forward (or inverse) in one pass: ``(y, logdet)``.

    Args:
        x: ``[B, C, H, W]``, any strides (``y`` when ``inverse``: the input of the direction computed).
        raw_scale: ``h_s``, ``[B, C/2, H, W]`` (channel mask) or ``[B, C, H, W]`` (checkerboard), any strides;
            None for the additive coupling (``scale = SCALE_ADDITIVE``).
        shift: ``h_t``, same shape as ``raw_scale`` (as given by the mask), any strides.
        mask, scale, flip, inverse, clamp: as in ``fastflow.ops.coupling`` (integer codes of ``fastflow._codes``).

    Returns:
        ``y`` ``[B, C, H, W]`` contiguous, dtype of ``x``; ``logdet`` ``[B]`` float32, ``±Σ log s`` per
        sample.
    """
    _check(mask, scale)
    batch, channels = x.shape[0], x.shape[1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if scale == _codes.SCALE_ADDITIVE or x.numel() == 0:
        # log s = 0: no reduction to do (and an empty batch needs no launch at all).
        logdet = torch.zeros(batch, dtype=torch.float32, device=x.device)
        if x.numel() == 0:
            return y, logdet
    # The additive coupling has no h_s: shift stands in for the pointer, never read (SCALE is a constexpr).
    raw = shift if raw_scale is None else raw_scale
    sizes, (sx, sr, st, sy) = _layout(x, [x, raw, shift, y], mask)
    n_rows, rows_h, n_cols, block_w, flat, programs = _launch_shape(sizes, batch, x.device)
    partial = torch.empty((batch, programs), dtype=torch.float32, device=x.device)
    first_t, first_p = _halves(mask, channels, flip)
    _coupling_fwd_kernel[(batch, programs)](
        x, raw, shift, y, partial,
        first_t * x.stride(1), first_p * x.stride(1), first_t * y.stride(1), first_p * y.stride(1),
        n_rows, rows_h, n_cols, float(clamp),
        x.stride(0), *sx,
        raw.stride(0), *sr,
        shift.stride(0), *st,
        y.stride(0), *sy,
        MASK=mask, SCALE=scale, PARITY=0 if flip else 1, INVERSE=bool(inverse), BLOCK_W=block_w, FLAT=flat,
    )
    if scale == _codes.SCALE_ADDITIVE:
        return y, logdet
    return y, (partial.view(batch) if programs == 1 else partial.sum(dim=1))


def coupling_bwd(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    z: torch.Tensor,
    raw_scale: torch.Tensor,
    mask: int,
    scale: int,
    flip: bool,
    inverse: bool,
    clamp: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused backward of the affine coupling: ``(∂L/∂x, ∂L/∂h_s, ∂L/∂h_t)``.

    Args:
        grad_y: ``[B, C, H, W]``, any strides (zero strides of an expanded gradient included).
        grad_logdet: ``[B]``, any stride.
        z: ``[B, C, H, W]``, the op's input ``x`` (forward direction) or its output (inverse), any strides.
        raw_scale: ``h_s`` as in :func:`coupling_fwd` (never None: the additive backward needs no kernel).
        mask, scale, flip, inverse, clamp: as in ``fastflow.ops.coupling``.

    Returns:
        ``grad_x`` ``[B, C, H, W]`` (dtype of ``z``), ``grad_raw_scale`` and ``grad_shift`` shaped like
        ``raw_scale`` (its dtype), all contiguous; zero at the checkerboard's pass-through positions.
    """
    _check(mask, scale)
    if scale == _codes.SCALE_ADDITIVE:
        raise ValueError("coupling_bwd is for the affine coupling (the additive one's gradient needs no kernel)")
    batch, channels = z.shape[0], z.shape[1]
    grad_x = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    grad_raw = torch.empty(raw_scale.shape, dtype=raw_scale.dtype, device=raw_scale.device)
    grad_shift = torch.empty_like(grad_raw)
    if z.numel() == 0:
        return grad_x, grad_raw, grad_shift
    sizes, (sg, sz, sr, sx, sp) = _layout(z, [grad_y, z, raw_scale, grad_x, grad_raw], mask)
    n_rows, rows_h, n_cols, block_w, flat, programs = _launch_shape(sizes, batch, z.device)
    first_t, first_p = _halves(mask, channels, flip)
    _coupling_bwd_kernel[(batch, programs)](
        grad_y, z, raw_scale, grad_logdet, grad_x, grad_raw, grad_shift,
        first_t * grad_y.stride(1), first_p * grad_y.stride(1), first_t * z.stride(1),
        first_t * grad_x.stride(1), first_p * grad_x.stride(1),
        n_rows, rows_h, n_cols, float(clamp), grad_logdet.stride(0),
        grad_y.stride(0), *sg,
        z.stride(0), *sz,
        raw_scale.stride(0), *sr,
        grad_x.stride(0), *sx,
        grad_raw.stride(0), *sp,
        MASK=mask, SCALE=scale, PARITY=0 if flip else 1, INVERSE=bool(inverse), BLOCK_W=block_w, FLAT=flat,
    )
    return grad_x, grad_raw, grad_shift
