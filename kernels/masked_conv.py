"""Triton kernels of PixelCNN's masked convolution: implicit GEMMs over the live taps only, forward and backward.

``fastflow.ops.masked_conv`` dispatches here when the ``triton`` backend runs a call; the kernel contract is that
module's docstring, the masks are ``fastflow.reference.masked_conv``. Every convolution is stride 1 with "same"
padding ``(kh // 2, kw // 2)``.

The live taps. In raster order the taps a mask keeps are always a *prefix* of the ``kh × kw`` kernel: the rows above
the centre, then the centre row up to the centre (``"A"``: left of it; ``"B"``, or three data channels: the centre
too; ``"V"``: the whole row). So tap ``t < T`` (``T = len(live_taps(...))``) is kernel position
``(t // kw, t % kw)``, shift ``(dy, dx) = (t // kw − kh // 2, t % kw − kw // 2)``: the kernels need no tap table, and
a 7×7 mask A visits 24 taps instead of 49. The launchers apply the mask to the weight on the host (``[C_out, C_in,
kh, kw]``, noise beside the convolution), which also zeroes the channel pairs the centre tap hides with three data
channels, and hand the kernels the ``T`` live taps as a contiguous ``[T, K, N]`` matrix.

Forward (:func:`masked_conv_fwd`): the implicit GEMM ``y[m, n] = Σ_t Σ_k x[pixel(m) + d_t, k] · w[t, k, n]`` with
``M = B·H·W`` output pixels (``m`` split into ``(b, h, w)`` once per tile), ``N = C_out``, and ``K = C_in`` per tap.
Each program owns one ``[BLOCK_M, BLOCK_N]`` tile of ``y``; for each live tap it loads the ``x`` tile ``[BLOCK_M,
BLOCK_K]`` at the shifted pixels (out-of-image pixels masked to zero: the padding) and the weight tile ``[BLOCK_K,
BLOCK_N]``, ``tl.dot``-ing them into a float32 accumulator; the bias is added in the epilogue. ``x`` is read and ``y``
written through their strides (any layout, channels-last included: no copies). The grid is one flat axis, the
``N`` blocks fastest so that the programs sharing an ``x`` tile run together (it stays in L2).

Backward, ``∂L/∂x`` (:func:`masked_conv_bwd`): the same kernel on ``g = ∂L/∂y`` with ``N = C_in``, ``K = C_out``,
the weight as ``[T, C_out, C_in]`` and the shifts negated: ``∂L/∂x[p, c] = Σ_t Σ_o g[p − d_t, o] · w[o, c, t]``.

Backward, ``∂L/∂w``: per live tap the GEMM ``∂L/∂w[t] = Σ_m g[m, :]ᵀ · x[m + d_t, :]`` (``[C_out, C_in]``), a
split-K reduction over the ``M`` pixels: program ``(i, s)`` owns one ``[BLOCK_O, BLOCK_C]`` block of one tap and
the ``s``-th contiguous run of pixel blocks, and stores its float32 partial in ``[SPLIT, T, C_out, C_in]``; the
programs of tap 0's first input-channel block also store the row sums of ``g`` (``∂L/∂b``) in ``[SPLIT, C_out]``.
One ``sum`` over the split axis finishes both: deterministic, no atomics (and autotuning's repeated launches stay
idempotent: every partial is stored, never accumulated). ``SPLIT`` depends only on the sizes and the GPU, never on
the autotuned blocks. The launcher scatters the ``T`` taps into a zero ``[C_out, C_in, kh, kw]`` and keeps only the
mask's entries (so every masked entry, the centre tap's hidden channel pairs included, is exactly zero).

Precision (accumulation always float32): float16 / bfloat16 operands go to the tensor cores in their own type (the
masked weight rounded to it first, as ``conv2d(x, weight ⊙ mask)`` has it; products of 16-bit values are exact in
float32); float32 operands in IEEE float32, or TF32 when PyTorch's ``conv2d`` (cuDNN, the reference) would use it
and both channel counts are at least ``_TF32_MIN_CHANNELS`` (where IEEE dots make the kernel compute-bound; see
``kernels/actnorm_invconv.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.ops.masked_conv import _memory_format
from fastflow.reference.masked_conv import conv_mask, live_taps

from ._common import (
    INTERPRETED,
    UPCAST_DOT_OPERANDS,
    cudnn_conv_allows_tf32,
    sm_count,
    tile_configs,
)

# tl.dot's smallest block along every dimension.
_MIN_BLOCK = 16
# ∂L/∂w: aim for this many programs per SM in all, each reducing at least _MIN_PIXELS_PER_SPLIT pixels. Under the
# interpreter a few splits exercise the multi-split path on small inputs.
_PROGRAMS_PER_SM = 4
_MIN_PIXELS_PER_SPLIT = 16 if INTERPRETED else 512
_MAX_SPLIT = 3 if INTERPRETED else 1024
# TF32 for float32 dots when both channel counts reach this (and cuDNN would use TF32 for conv2d). Per pixel a layer
# moves ~(C_in + C_out) values for 2·T·C_in·C_out flops: far past the IEEE ridge (~16 flop/byte on an H200) already
# at 64 channels, while small layers keep IEEE's accuracy.
_TF32_MIN_CHANNELS = 64
_HALF_TYPES = (torch.float16, torch.bfloat16)


def _conv_configs() -> list[triton.Config]:
    """Autotuning space of the implicit GEMM: ``[BLOCK_M, BLOCK_N]`` output tile, ``BLOCK_K`` channel step."""
    return tile_configs(("BLOCK_M", "BLOCK_N", "BLOCK_K"), (
        (128, 64, 32, 4, 3),
        (64, 64, 32, 4, 3),
        (128, 128, 32, 8, 3),
        (64, 128, 32, 4, 3),
        (64, 32, 32, 4, 4),
        (128, 32, 16, 4, 3),
        (64, 16, 16, 4, 3),
    ))


def _grad_weight_configs() -> list[triton.Config]:
    """Autotuning space of ``∂L/∂w``: ``[BLOCK_O, BLOCK_C]`` block of one tap, ``BLOCK_M`` pixel step."""
    return tile_configs(("BLOCK_O", "BLOCK_C", "BLOCK_M"), (
        (64, 64, 32, 4, 3),
        (32, 32, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (128, 128, 32, 8, 3),
        (32, 32, 128, 4, 3),
        (16, 16, 128, 4, 3),
    ))


def _channel_limit(n) -> int:
    return max(_MIN_BLOCK, triton.next_power_of_2(int(n)))


def _prune_conv_configs(configs, named_args, **kwargs):
    """Drop configs whose channel blocks exceed the (padded) channel counts: they only compute masked zeros."""
    limit_n, limit_k = _channel_limit(named_args["N"]), _channel_limit(named_args["K"])
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= limit_n and c.kwargs["BLOCK_K"] <= limit_k]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]))]


def _prune_grad_weight_configs(configs, named_args, **kwargs):
    """The same for ``∂L/∂w``'s ``[BLOCK_O, BLOCK_C]`` blocks."""
    limit_o, limit_c = _channel_limit(named_args["C_out"]), _channel_limit(named_args["C_in"])
    kept = [c for c in configs if c.kwargs["BLOCK_O"] <= limit_o and c.kwargs["BLOCK_C"] <= limit_c]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_O"], c.kwargs["BLOCK_C"]))]


# --------------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def _dot_operands(lead, other, DOT_16BIT: tl.constexpr):
    """``(lead, other)`` as the operands of a dot: as they are when ``DOT_16BIT`` (one 16-bit dtype), else both in
    float32. Always float32 under the interpreter (see ``UPCAST_DOT_OPERANDS``)."""
    if not DOT_16BIT:
        lead = lead.to(tl.float32)
        other = other.to(tl.float32)
    if UPCAST_DOT_OPERANDS:
        lead = lead.to(tl.float32)
        other = other.to(tl.float32)
    return lead, other


@triton.jit
def _pixels(offs_m, M, HW, W):
    """``(b, h, w, in_bounds)`` of the flat pixel indices ``offs_m`` (``m = (b·H + h)·W + w``); ``b`` int64."""
    in_bounds = offs_m < M
    b = offs_m // HW
    rest = offs_m - b * HW
    h = rest // W
    return b.to(tl.int64), h, rest - h * W, in_bounds


@triton.jit
def _shifted_rows(b, h, w, in_bounds, dy, dx, H, W, stride_b, stride_h, stride_w):
    """Offsets (int64) of the pixels ``(h + dy, w + dx)`` of samples ``b``, and where they lie in the image (the
    others are the zero padding)."""
    hh = h + dy
    ww = w + dx
    inside = in_bounds & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return b * stride_b + hh.to(tl.int64) * stride_h + ww.to(tl.int64) * stride_w, inside


# --------------------------------------------------------------------------------------------------
# Kernels.


@triton.autotune(
    configs=_conv_configs(),
    key=["M", "N", "K", "T", "KW", "SIGN", "HAS_BIAS", "DOT_16BIT", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_conv_configs},
)
@triton.jit
def _conv_kernel(
    src_ptr, w_ptr, bias_ptr, out_ptr,
    M, HW, H, W, N, K,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    T: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, SIGN: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_16BIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out[b, n, h, w] = Σ_{t<T} Σ_k src[b, k, h + SIGN·dy_t, w + SIGN·dx_t] · w[t, k, n] (+ bias[n])``.

    ``src`` ``[B, K, H, W]`` and ``out`` ``[B, N, H, W]`` any strides; ``w`` ``[T, K, N]`` contiguous; ``bias``
    ``[N]`` (read when ``HAS_BIAS``). Tap ``t`` is kernel position ``(t // KW, t % KW)``, its shift ``(t // KW −
    CH, t % KW − CW)``. One program: one ``[BLOCK_M, BLOCK_N]`` tile of the ``M = B·H·W`` by ``N`` output.
    """
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(N, BLOCK_N)
    pid_n = pid % blocks_n
    pid_m = pid // blocks_n
    b, h, w, m_ok = _pixels(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), M, HW, W)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    arange_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, T):
        dy = SIGN * (t // KW - CH)
        dx = SIGN * (t % KW - CW)
        rows, inside = _shifted_rows(b, h, w, m_ok, dy, dx, H, W, stride_sb, stride_sh, stride_sw)
        w_tap = w_ptr + t * K * N  # T·K·N is a small weight: int32 offsets
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + arange_k
            k_ok = offs_k < K
            a = tl.load(src_ptr + rows[:, None] + offs_k.to(tl.int64)[None, :] * stride_sc,
                        mask=inside[:, None] & k_ok[None, :], other=0.0)
            wt = tl.load(w_tap + offs_k[:, None] * N + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            a, wt = _dot_operands(a, wt, DOT_16BIT)
            acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + b * stride_ob + h.to(tl.int64) * stride_oh + w.to(tl.int64) * stride_ow
    tl.store(out[:, None] + offs_n.to(tl.int64)[None, :] * stride_oc, acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.autotune(
    configs=_grad_weight_configs(),
    key=["M", "C_out", "C_in", "T", "KW", "DOT_16BIT", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_grad_weight_configs},
)
@triton.jit
def _grad_weight_kernel(
    g_ptr, x_ptr, gw_ptr, gb_ptr,
    M, HW, H, W, C_out, C_in,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    T: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    DOT_16BIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Program ``(i, s)``: the partial ``Σ_m g[m, o]·x[m + d_t, c]`` of one ``[BLOCK_O, BLOCK_C]`` block of tap
    ``t`` over the ``s``-th run of pixel blocks.

    ``g`` ``[B, C_out, H, W]``, ``x`` ``[B, C_in, H, W]`` any strides. Writes ``gw`` ``[SPLIT, T, C_out, C_in]``
    and (tap 0, first input-channel block) ``gb`` ``[SPLIT, C_out]``, float32 contiguous; an empty run writes
    zeros. ``i`` runs over (tap, output block, input block), input blocks fastest.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    blocks_c = tl.cdiv(C_in, BLOCK_C)
    blocks_o = tl.cdiv(C_out, BLOCK_O)
    pid_c = pid % blocks_c
    rest = pid // blocks_c
    pid_o = rest % blocks_o
    t = rest // blocks_o
    dy = t // KW - CH
    dx = t % KW - CW
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < C_out
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C_in
    g_channels = offs_o.to(tl.int64) * stride_gc
    x_channels = offs_c.to(tl.int64) * stride_xc
    # This program's contiguous run [first, last) of pixel blocks.
    blocks_m = tl.cdiv(M, BLOCK_M)
    per_split = tl.cdiv(blocks_m, splits)
    first = split * per_split
    last = tl.minimum(first + per_split, blocks_m)
    with_bias = (t == 0) & (pid_c == 0)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for block in range(first, last):
        b, h, w, m_ok = _pixels(block * BLOCK_M + tl.arange(0, BLOCK_M), M, HW, W)
        # gᵀ tile [BLOCK_O, BLOCK_M] (loaded transposed, so that gᵀ·x needs no transpose).
        g_pixels = b * stride_gb + h.to(tl.int64) * stride_gh + w.to(tl.int64) * stride_gw
        g = tl.load(g_ptr + g_channels[:, None] + g_pixels[None, :], mask=o_ok[:, None] & m_ok[None, :], other=0.0)
        rows, inside = _shifted_rows(b, h, w, m_ok, dy, dx, H, W, stride_xb, stride_xh, stride_xw)
        x = tl.load(x_ptr + rows[:, None] + x_channels[None, :], mask=inside[:, None] & c_ok[None, :], other=0.0)
        if with_bias:
            acc_b += tl.sum(g.to(tl.float32), axis=1)
        g, x = _dot_operands(g, x, DOT_16BIT)
        acc = tl.dot(g, x, acc, input_precision=DOT_PRECISION)
    partial = (split * T + t).to(tl.int64) * C_out
    tl.store(gw_ptr + (partial + offs_o[:, None]) * C_in + offs_c[None, :], acc, mask=o_ok[:, None] & c_ok[None, :])
    if with_bias:
        tl.store(gb_ptr + split.to(tl.int64) * C_out + offs_o, acc_b, mask=o_ok)


# --------------------------------------------------------------------------------------------------
# Host side.


def _dot_precision(in_channels: int, out_channels: int) -> str:
    """``input_precision`` of the float32 dots (see the module docstring)."""
    wide = min(in_channels, out_channels) >= _TF32_MIN_CHANNELS
    return "tf32" if wide and not INTERPRETED and cudnn_conv_allows_tf32() else "ieee"


def _geometry(weight: torch.Tensor, mask_type: str, data_channels: int) -> tuple[torch.Tensor, dict]:
    """``(mask, constexprs)``: the 0/1 mask ``[C_out, C_in, kh, kw]`` in the weight's dtype and device, and the
    kernels' tap constants ``T``, ``KW``, ``CH``, ``CW``."""
    out_channels, in_channels, kh, kw = weight.shape
    taps = live_taps((kh, kw), mask_type, data_channels)
    # The kernels assume the live taps are the first T in raster order (see the module docstring).
    assert taps == [(t // kw, t % kw) for t in range(len(taps))], taps
    mask = conv_mask(out_channels, in_channels, (kh, kw), mask_type, data_channels, dtype=weight.dtype,
                     device=weight.device)
    return mask, {"T": len(taps), "KW": kw, "CH": kh // 2, "CW": kw // 2}


def _live_weight(weight: torch.Tensor, mask: torch.Tensor, taps: int, dtype: torch.dtype,
                 transpose: bool) -> torch.Tensor:
    """The masked weight's ``taps`` live taps as a contiguous ``[T, C_in, C_out]`` (``[T, C_out, C_in]`` when
    ``transpose``) in ``dtype``. A select, not a product: a non-finite masked entry stays ignored."""
    out_channels, in_channels = weight.shape[:2]
    masked = torch.where(mask != 0, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    live = masked.reshape(out_channels, in_channels, -1)[:, :, :taps]
    live = live.permute(2, 0, 1) if transpose else live.permute(2, 1, 0)
    return live.to(dtype).contiguous()


def _check_sizes(*tensors: torch.Tensor) -> None:
    for t in tensors:
        # Pixel indices and the weight's offsets are int32 in the kernels (element offsets are int64).
        if t.shape[0] * t.shape[2] * t.shape[3] >= 2**31:
            raise ValueError(f"masked_conv's Triton kernels take fewer than 2**31 pixels, got {tuple(t.shape)}")


def _implicit_gemm(src: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                   geometry: dict, sign: int, precision: str) -> None:
    """``out`` ``[B, N, H, W]`` ← the implicit GEMM of ``src`` ``[B, K, H, W]`` with ``weight_t`` ``[T, K, N]``
    (shifts times ``sign``), plus ``bias``; ``src`` and ``out`` any strides."""
    batch, channels, height, width = src.shape
    pixels = batch * height * width
    n = out.shape[1]
    dot_16bit = src.dtype in _HALF_TYPES and weight_t.dtype == src.dtype

    def grid(meta):
        return (triton.cdiv(pixels, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    # Without a bias, the weight stands in for its pointer, never read (HAS_BIAS is a constexpr).
    _conv_kernel[grid](
        src, weight_t, weight_t if bias is None else bias, out,
        pixels, height * width, height, width, n, channels,
        *src.stride(),
        *out.stride(),
        SIGN=sign, HAS_BIAS=bias is not None, DOT_16BIT=dot_16bit, DOT_PRECISION=precision, **geometry,
    )


def _split_count(pixels: int, out_channels: int, in_channels: int, taps: int, device: torch.device) -> int:
    """``SPLIT`` of the ``∂L/∂w`` reduction: from the sizes and the GPU only (not the autotuned blocks)."""
    target = sm_count(device) * _PROGRAMS_PER_SM
    blocks = taps * triton.cdiv(out_channels, 64) * triton.cdiv(in_channels, 64)  # typical; the config decides
    split = min(triton.cdiv(target, blocks), triton.cdiv(pixels, _MIN_PIXELS_PER_SPLIT), _MAX_SPLIT)
    return max(1, split)


def masked_conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask_type: str,
                    data_channels: int) -> torch.Tensor:
    """``conv2d(x, weight ⊙ mask, bias, padding=(kh // 2, kw // 2))`` over the live taps.

    Args:
        x: ``[B, C_in, H, W]`` float32, float16 or bfloat16, any strides.
        weight: ``[C_out, C_in, kh, kw]`` (odd ``kh``, ``kw``), the unmasked weight. bias: ``[C_out]`` or None.
        mask_type: ``"A"``, ``"B"`` or ``"V"``. data_channels: 1 or 3.

    Returns:
        ``y`` ``[B, C_out, H, W]`` in ``x``'s dtype (accumulated in float32), channels-last when ``x`` is (and is
        not also contiguous), else contiguous.
    """
    batch, in_channels, height, width = x.shape
    out_channels = weight.shape[0]
    y = torch.empty((batch, out_channels, height, width), dtype=x.dtype, device=x.device,
                    memory_format=_memory_format(x))
    if y.numel() == 0:
        return y
    _check_sizes(x)
    mask, geometry = _geometry(weight, mask_type, data_channels)
    if geometry["T"] == 0:  # no live tap (the op's checks refuse this): the bias alone
        y.copy_((bias if bias is not None else weight.new_zeros(out_channels))[None, :, None, None].expand_as(y))
        return y
    dot_dtype = x.dtype if x.dtype in _HALF_TYPES else torch.float32
    weight_t = _live_weight(weight, mask, geometry["T"], dot_dtype, transpose=False)
    _implicit_gemm(x, weight_t, None if bias is None else bias.contiguous(), y, geometry, 1,
                   _dot_precision(in_channels, out_channels))
    return y


def masked_conv_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask_type: str,
                    data_channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`masked_conv_fwd`.

    Args:
        grad_y: ``[B, C_out, H, W]``, any strides. x: the forward's input ``[B, C_in, H, W]``, any strides.
        weight: the unmasked ``[C_out, C_in, kh, kw]``. mask_type, data_channels: the forward's.

    Returns:
        ``grad_x`` ``[B, C_in, H, W]`` in ``x``'s dtype and memory format (the forward's rule); ``grad_weight``
        ``[C_out, C_in, kh, kw]`` contiguous, exactly zero at every masked entry, and ``grad_bias`` ``[C_out]``,
        both in ``weight``'s dtype and accumulated in float32.
    """
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    device = x.device
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=device, memory_format=_memory_format(x))
    mask, geometry = _geometry(weight, mask_type, data_channels)
    taps = geometry["T"]
    pixels = batch * height * width
    if pixels == 0 or taps == 0:
        grad_x.zero_()
        grad_bias = grad_y.sum(dim=(0, 2, 3), dtype=torch.float32).to(weight.dtype)
        return grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format), grad_bias
    _check_sizes(x, grad_y)
    precision = _dot_precision(in_channels, out_channels)

    # ∂L/∂x: the transposed implicit GEMM (K = C_out, N = C_in, shifts negated).
    dot_dtype = grad_y.dtype if grad_y.dtype in _HALF_TYPES else torch.float32
    weight_t = _live_weight(weight, mask, taps, dot_dtype, transpose=True)
    _implicit_gemm(grad_y, weight_t, None, grad_x, geometry, -1, precision)

    # ∂L/∂w, ∂L/∂b: the split-K reduction over the pixels, finished by one sum over the split axis.
    split = _split_count(pixels, out_channels, in_channels, taps, device)
    partial_w = torch.empty((split, taps, out_channels, in_channels), dtype=torch.float32, device=device)
    partial_b = torch.empty((split, out_channels), dtype=torch.float32, device=device)

    def grid(meta):
        blocks = triton.cdiv(out_channels, meta["BLOCK_O"]) * triton.cdiv(in_channels, meta["BLOCK_C"])
        return (taps * blocks, split)

    _grad_weight_kernel[grid](
        grad_y, x, partial_w, partial_b,
        pixels, height * width, height, width, out_channels, in_channels,
        *grad_y.stride(),
        *x.stride(),
        DOT_16BIT=grad_y.dtype in _HALF_TYPES and grad_y.dtype == x.dtype, DOT_PRECISION=precision, **geometry,
    )
    live = partial_w[0] if split == 1 else partial_w.sum(dim=0)
    grad_bias = partial_b[0] if split == 1 else partial_b.sum(dim=0)
    full = torch.zeros((out_channels, in_channels, kh * kw), dtype=torch.float32, device=device)
    full[:, :, :taps] = live.permute(1, 2, 0)
    # Only the mask's entries: the centre tap's hidden channel pairs (three data channels) become exact zeros.
    full = torch.where(mask.reshape(out_channels, in_channels, kh * kw) != 0, full, 0.0)
    return grad_x, full.reshape(weight.shape).to(weight.dtype), grad_bias.to(weight.dtype)
