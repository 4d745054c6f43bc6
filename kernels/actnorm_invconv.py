"""Triton kernels of the fused ActNorm + invertible 1×1 convolution op: the per-pixel channel mix and its backward.

``fastflow.ops.actnorm_invconv`` folds ActNorm and the LU weight into one ``C×C`` matrix ``W`` and a bias ``b``
(``fastflow.reference.actnorm_invconv.folded_weight``) and dispatches here when the ``triton`` backend runs a
call; the kernel contract is that module's docstring. The work is three GEMMs over the pixels:

- forward (:func:`actnorm_invconv_fwd`): ``y = W·x + b`` at every pixel;
- backward (:func:`actnorm_invconv_bwd`): ``∂L/∂x = Wᵀ·g`` at every pixel, and ``∂L/∂W = Σ_{b,p} g·xᵀ``,
  ``∂L/∂b = Σ_{b,p} g``.

Layout of the work. ``x [B, C, H, W]`` is seen as ``[B, C, P]`` with ``P = H·W`` pixels (a view whenever the
pixel dimensions merge, channels-last included; a contiguous copy otherwise). Element offsets are int64, loads
are masked (``other=0``) so that any ``C`` and ``P`` work with the blocks of at least 16 that ``tl.dot`` needs.

Forward: per sample, the GEMM ``[C, C] × [C, P]``; each program computes one ``[BLOCK_O, BLOCK_P]`` tile of
``y`` (output channels × pixels), looping over the input channels in ``BLOCK_C`` steps, and adds the bias in the
epilogue. The grid is one flat axis ordered (output-channel block, pixel block, sample), output-channel blocks
fastest so that the programs sharing a tile of ``x`` run together (it stays in L2); one axis because CUDA caps
the second and third grid axes at 65535, which large images or batches would pass.

Backward, ``C ≤ 64`` (Glow's levels, ``C = 12, 24, 48`` at CIFAR size, where memory traffic is the cost): one
fused kernel reads ``g`` and ``x`` once. The grid is ``(SPLIT,)``; each program keeps ``Wᵀ`` (all channels,
padded to a power of two ``BLOCK_C ≥ 16``) in registers, takes the ``s``-th contiguous run of (sample, pixel
block) items and, per item, loads the ``g`` tile ``[BLOCK_C, BLOCK_P]`` and the ``xᵀ`` tile ``[BLOCK_P,
BLOCK_C]`` once, stores ``∂L/∂x = Wᵀ·g`` and accumulates ``g·xᵀ`` ``[BLOCK_C, BLOCK_C]`` and the row sums of
``g``; it writes them as float32 partials to ``[SPLIT, C, C]`` and ``[SPLIT, C]``.

Backward, ``C > 64``: ``∂L/∂x`` is the forward kernel again (the transposed weight given by its strides, no
copy), then ``∂L/∂W`` is a split-K reduction over the ``B·P`` (sample, pixel) pairs: the grid is ``(C / BLOCK_O,
C / BLOCK_C, SPLIT)``; program ``(i, j, s)`` owns the ``[BLOCK_O, BLOCK_C]`` block ``(i, j)`` of ``∂L/∂W`` and the
``s``-th run of items, and writes its partial to ``[SPLIT, C, C]``; the programs of the first column block
(``j = 0``) also write the row sums of ``g`` to ``[SPLIT, C]``.

Either way one ``sum`` over the split axis finishes ``∂L/∂W`` and ``∂L/∂b``: deterministic, no atomics. ``SPLIT``
depends only on the sizes and the GPU (not on the autotuned blocks), so that the partial buffers can be allocated
before autotuning; a program whose run is empty writes zeros.

Precision of the dots (accumulation always float32):

- float16 / bfloat16 operands: the dots run in that type on the tensor cores, the float32 weight rounded to it
  by PyTorch before the launch (a ``C×C`` cast), exactly what the plain-PyTorch reference
  ``conv2d(x, W.to(x.dtype))`` does (``g·xᵀ`` loses nothing: products of 16-bit values are exact in float32);
- float32 operands: TF32 when PyTorch's own ``conv2d`` (cuDNN, the op's reference) would use it
  (``torch.backends.cudnn`` allows TF32 for convolutions, its default) *and* ``C ≥ 64``, where IEEE float32 dots
  would make the op compute-bound (see ``_TF32_MIN_CHANNELS``); IEEE float32 otherwise. Not the matmul flag
  (``torch.backends.cuda.matmul``): this op is a 1×1 convolution, and its reference runs through cuDNN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRETED,
    UPCAST_DOT_OPERANDS,
    autotune_configs,
    cudnn_conv_allows_tf32,
    sm_count,
    tile_configs,
)

# tl.dot's smallest block along every dimension.
_MIN_BLOCK = 16
# ∂L/∂W: aim for this many programs per SM in all, each reducing at least _MIN_PIXELS_PER_SPLIT (sample, pixel)
# pairs, so that small reductions do not pay for partials they do not need. Under the interpreter a few splits
# exercise the multi-split path on small inputs.
_PROGRAMS_PER_SM = 4
_MIN_PIXELS_PER_SPLIT = 16 if INTERPRETED else 512
_MAX_SPLIT = 3 if INTERPRETED else 1024
# The fused backward, up to this many channels: all of Wᵀ and a [C, C] accumulator stay in registers. Each of its
# programs reduces at least max(_MIN_PIXELS_PER_FUSED_SPLIT, _FUSED_PIXELS_PER_CHANNEL·C) pixels: its C² partials,
# written and then read by the sum, cost at most 2C²/(8C·3C) ≈ 8% of the 3C values per pixel that it moves (g, x,
# ∂L/∂x), while small batches still get enough programs to keep the SMs busy.
_FUSED_MAX_CHANNELS = 64
_MIN_PIXELS_PER_FUSED_SPLIT = 16 if INTERPRETED else 64
_FUSED_PIXELS_PER_CHANNEL = 0 if INTERPRETED else 8
# TF32 for float32 dots from this many channels on (when cuDNN would use it). Per pixel the mix reads and writes
# C float32 values (8C bytes) for 2C² flops: C/4 flop/byte (the ∂L/∂W reduction alike: 2C² flops per 2C values
# read). An H200 streams ~4.3 TB/s; IEEE float32 dots run on its FMA units, ~67 TFLOP/s: a ridge at ~16 flop/byte,
# C ≈ 62. From C = 64 on, IEEE compute is the bottleneck; TF32's ~490 TFLOP/s (dense) moves the ridge to ~114
# flop/byte (C ≈ 450): memory-bound again. Below 64 channels the op is memory-bound in IEEE already, and TF32
# would only cost three decimal digits. (The fused backward moves 3C values for 4C² flops, C/3 flop/byte: at
# C = 48, padded to 64, it sits near the IEEE ridge; a measurement on the GPU can move this threshold.)
_TF32_MIN_CHANNELS = 64


def _mix_configs() -> list[triton.Config]:
    """Autotuning space of the channel mix: ``[BLOCK_O, BLOCK_P]`` output tile, ``BLOCK_C`` input-channel step."""
    return tile_configs(("BLOCK_O", "BLOCK_P", "BLOCK_C"), (
        (16, 256, 16, 4, 3),
        (32, 128, 32, 4, 3),
        (32, 256, 32, 8, 3),
        (64, 128, 32, 4, 3),
        (64, 64, 32, 4, 4),
        (128, 128, 32, 8, 3),
    ))


def _grad_weight_configs() -> list[triton.Config]:
    """Autotuning space of ``∂L/∂W``: ``[BLOCK_O, BLOCK_C]`` output block, ``BLOCK_P`` pixel step."""
    return tile_configs(("BLOCK_O", "BLOCK_C", "BLOCK_P"), (
        (16, 16, 128, 4, 3),
        (32, 32, 64, 4, 3),
        (32, 32, 128, 4, 3),
        (64, 64, 32, 4, 3),
        (64, 64, 64, 4, 3),
        (128, 128, 32, 8, 3),
    ))


def _fused_backward_configs() -> list[triton.Config]:
    """Autotuning space of the fused backward: ``BLOCK_P`` pixels per item (``BLOCK_C`` is the padded ``C``)."""
    space = (
        triton.Config({"BLOCK_P": block_p}, num_warps=warps, num_stages=3)
        for block_p, warps in ((16, 4), (16, 8), (32, 4), (32, 8), (32, 16), (64, 8), (128, 8))
    )
    return autotune_configs(space, interpreted={"BLOCK_P": 16})


def _prune_fused_configs(configs, named_args, **kwargs):
    """Drop the configs whose ``[BLOCK_C, BLOCK_P]`` tiles would spill registers (sm_90, ptxas).

    IEEE float32 dots run on the FMA units, each thread holding its rows and columns of both operands over the
    whole reduction: at most 4 tile elements per thread, else they spill (hundreds of bytes to kilobytes at
    ``BLOCK_C = 64``). The tensor-core dots (16-bit, TF32) keep operands in shared memory: up to 16 per thread.
    """
    # One float32 dot in IEEE is enough to need the FMA budget.
    fma = kwargs["DOT_PRECISION"] == "ieee" and not (kwargs["GX_16BIT"] and kwargs["GW_16BIT"])
    budget = 4 if fma else 16

    def per_thread(config):
        return kwargs["BLOCK_C"] * config.kwargs["BLOCK_P"] / (32 * config.num_warps)

    kept = [c for c in configs if per_thread(c) <= budget]
    return kept or [min(configs, key=per_thread)]


def _prune_channel_blocks(configs, named_args, **kwargs):
    """Drop configs whose channel blocks exceed the (padded) channel count: they only compute masked zeros."""
    limit = max(_MIN_BLOCK, triton.next_power_of_2(named_args["channels"]))
    kept = [c for c in configs if c.kwargs["BLOCK_O"] <= limit and c.kwargs["BLOCK_C"] <= limit]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_O"], c.kwargs["BLOCK_C"]))]


# --------------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def _dot_operands(lead, other, DOT_16BIT: tl.constexpr):
    """``(lead, other)`` as the operands of a dot: as they are when ``DOT_16BIT`` (they share a 16-bit dtype, the
    launchers having rounded the weight to it), else both cast to float32. Always float32 under the interpreter:
    the same products, 16-bit ones being exact in float32."""
    if not DOT_16BIT:
        lead = lead.to(tl.float32)
        other = other.to(tl.float32)
    if UPCAST_DOT_OPERANDS:
        lead = lead.to(tl.float32)
        other = other.to(tl.float32)
    return lead, other


@triton.jit
def _run_of_items(batch, pixels, split, splits, BLOCK_P: tl.constexpr):
    """``(first, last, blocks_p)``: the contiguous run ``[first, last)`` of the (sample, pixel block) items that
    split ``split`` of ``splits`` reduces, and the pixel blocks per sample."""
    blocks_p = tl.cdiv(pixels, BLOCK_P)
    items = batch * blocks_p
    per_split = tl.cdiv(items, splits)
    first = split * per_split
    return first, tl.minimum(first + per_split, items), blocks_p


@triton.jit
def _item_tiles(
    g_ptr, x_ptr, item, blocks_p, pixels, offs_o64, mask_o, offs_c64, mask_c,
    stride_gb, stride_gc, stride_gp, stride_xb, stride_xc, stride_xp,
    BLOCK_P: tl.constexpr,
):
    """The tiles of one (sample, pixel block) item: ``g[b, o-block, p-block]`` ``[BLOCK_O, BLOCK_P]`` and ``xᵀ``
    ``[BLOCK_P, BLOCK_C]`` (loaded transposed, so that ``g·xᵀ`` needs no transpose), with the sample ``b``
    (int64), the pixel offsets (int64) and the pixel mask."""
    b = item // blocks_p
    offs_p = (item - b * blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < pixels
    offs_p64 = offs_p.to(tl.int64)
    b = b.to(tl.int64)
    g = tl.load(
        g_ptr + b * stride_gb + offs_o64[:, None] * stride_gc + offs_p64[None, :] * stride_gp,
        mask=mask_o[:, None] & mask_p[None, :],
        other=0.0,
    )
    x_t = tl.load(
        x_ptr + b * stride_xb + offs_p64[:, None] * stride_xp + offs_c64[None, :] * stride_xc,
        mask=mask_p[:, None] & mask_c[None, :],
        other=0.0,
    )
    return g, x_t, b, offs_p64, mask_p


# --------------------------------------------------------------------------------------------------
# Kernels.


@triton.autotune(
    configs=_mix_configs(),
    key=["channels", "pixels", "HAS_BIAS", "DOT_16BIT", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_channel_blocks},
)
@triton.jit
def _channel_mix_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    channels, pixels,
    stride_xb, stride_xc, stride_xp,
    stride_wo, stride_wc,
    stride_yb, stride_yc, stride_yp,
    HAS_BIAS: tl.constexpr, DOT_16BIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: the tile ``y[b, o-block, p-block] = Σ_c W[o, c]·x[b, c, p] (+ bias[o])``.

    ``x`` and ``y`` are ``[B, C, P]`` strided views; ``W`` is ``[C, C]`` with strides ``(stride_wo, stride_wc)``
    (swapped for ``Wᵀ``); ``bias`` is ``[C]`` float32 contiguous, read only when ``HAS_BIAS``. ``DOT_16BIT``: ``x``
    and ``W`` share a 16-bit dtype and the dots run in it; else float32 dots at ``DOT_PRECISION``.
    """
    blocks_o = tl.cdiv(channels, BLOCK_O)
    blocks_p = tl.cdiv(pixels, BLOCK_P)
    pid = tl.program_id(0)
    block_o = pid % blocks_o
    rest = pid // blocks_o
    block_p = rest % blocks_p
    b = (rest // blocks_p).to(tl.int64)
    offs_o = block_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_p = block_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_o = offs_o < channels
    mask_p = offs_p < pixels
    offs_o64 = offs_o.to(tl.int64)
    offs_p64 = offs_p.to(tl.int64)
    x_base = x_ptr + b * stride_xb
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for first_c in range(0, channels, BLOCK_C):
        offs_c = first_c + tl.arange(0, BLOCK_C)
        mask_c = offs_c < channels
        offs_c64 = offs_c.to(tl.int64)
        w = tl.load(
            w_ptr + offs_o64[:, None] * stride_wo + offs_c64[None, :] * stride_wc,
            mask=mask_o[:, None] & mask_c[None, :],
            other=0.0,
        )
        x = tl.load(
            x_base + offs_c64[:, None] * stride_xc + offs_p64[None, :] * stride_xp,
            mask=mask_c[:, None] & mask_p[None, :],
            other=0.0,
        )
        x, w = _dot_operands(x, w, DOT_16BIT)
        acc = tl.dot(w, x, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)
        acc += bias[:, None]
    y_offsets = offs_o64[:, None] * stride_yc + offs_p64[None, :] * stride_yp
    tl.store(
        y_ptr + b * stride_yb + y_offsets,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_o[:, None] & mask_p[None, :],
    )


@triton.autotune(
    configs=_grad_weight_configs(),
    key=["batch", "channels", "pixels", "DOT_16BIT", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_channel_blocks},
)
@triton.jit
def _grad_weight_kernel(
    g_ptr, x_ptr, grad_w_ptr, grad_b_ptr,
    batch, channels, pixels,
    stride_gb, stride_gc, stride_gp,
    stride_xb, stride_xc, stride_xp,
    DOT_16BIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program: block ``(o, c)`` of ``Σ g·xᵀ`` over the ``s``-th run of (sample, pixel block) items.

    ``g`` and ``x`` are ``[B, C, P]`` strided views (``DOT_16BIT``: of one 16-bit dtype, the dots run in it).
    Writes ``grad_w[s, o-block, c-block]`` (``[SPLIT, C, C]`` float32, contiguous) and, for ``c``-block 0,
    ``grad_b[s, o-block] = Σ g`` (``[SPLIT, C]``).
    """
    block_o = tl.program_id(0)
    block_c = tl.program_id(1)
    split = tl.program_id(2)
    offs_o = block_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = block_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_o = offs_o < channels
    mask_c = offs_c < channels
    offs_o64 = offs_o.to(tl.int64)
    offs_c64 = offs_c.to(tl.int64)
    first, last, blocks_p = _run_of_items(batch, pixels, split, tl.num_programs(2), BLOCK_P)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    # The bias row sums cost one add per loaded g: every program keeps them, the j = 0 column stores them.
    acc_bias = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for item in range(first, last):
        g, x_t, b, offs_p64, mask_p = _item_tiles(
            g_ptr, x_ptr, item, blocks_p, pixels, offs_o64, mask_o, offs_c64, mask_c,
            stride_gb, stride_gc, stride_gp, stride_xb, stride_xc, stride_xp, BLOCK_P,
        )
        acc_bias += tl.sum(g.to(tl.float32), axis=1)
        g, x_t = _dot_operands(g, x_t, DOT_16BIT)
        acc = tl.dot(g, x_t, acc, input_precision=DOT_PRECISION)
    partial = split.to(tl.int64) * channels * channels
    tl.store(
        grad_w_ptr + partial + offs_o64[:, None] * channels + offs_c64[None, :],
        acc,
        mask=mask_o[:, None] & mask_c[None, :],
    )
    if block_c == 0:
        tl.store(grad_b_ptr + split.to(tl.int64) * channels + offs_o64, acc_bias, mask=mask_o)


@triton.autotune(
    configs=_fused_backward_configs(),
    key=["batch", "channels", "pixels", "GX_16BIT", "GW_16BIT", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_fused_configs},
)
@triton.jit
def _fused_backward_kernel(
    g_ptr, x_ptr, w_ptr, gx_ptr, grad_w_ptr, grad_b_ptr,
    batch, channels, pixels,
    stride_gb, stride_gc, stride_gp,
    stride_xb, stride_xc, stride_xp,
    stride_wo, stride_wc,
    stride_gxb, stride_gxc, stride_gxp,
    GX_16BIT: tl.constexpr, GW_16BIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program: ``∂L/∂x = Wᵀ·g`` on the ``s``-th run of (sample, pixel block) items, and the partials
    ``Σ g·xᵀ``, ``Σ g`` over it; ``g`` and ``x`` are read once.

    ``g``, ``x`` and ``gx`` are ``[B, C, P]`` strided views, ``W`` is ``[C, C]`` with strides ``(stride_wo,
    stride_wc)``; ``C ≤ BLOCK_C`` (a power of two, ≥ 16). Writes ``grad_w[s]`` (``[SPLIT, C, C]`` float32,
    contiguous) and ``grad_b[s]`` (``[SPLIT, C]``). ``GX_16BIT``: ``g`` and ``W`` share a 16-bit dtype, ``Wᵀ·g``
    runs in it; ``GW_16BIT``: ``g`` and ``x`` share a 16-bit dtype, ``g·xᵀ`` runs in it; the float32 dots run at
    ``DOT_PRECISION``.
    """
    split = tl.program_id(0)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    offs_c64 = offs_c.to(tl.int64)
    # Wᵀ[c, o] = W[o, c], loaded once for every item of the run.
    w_t = tl.load(
        w_ptr + offs_c64[:, None] * stride_wc + offs_c64[None, :] * stride_wo,
        mask=mask_c[:, None] & mask_c[None, :],
        other=0.0,
    )
    first, last, blocks_p = _run_of_items(batch, pixels, split, tl.num_programs(0), BLOCK_P)
    acc_w = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for item in range(first, last):
        # Every output channel of g at once (the ∂L/∂x mix needs them all), so the g tile is [BLOCK_C, BLOCK_P].
        g, x_t, b, offs_p64, mask_p = _item_tiles(
            g_ptr, x_ptr, item, blocks_p, pixels, offs_c64, mask_c, offs_c64, mask_c,
            stride_gb, stride_gc, stride_gp, stride_xb, stride_xc, stride_xp, BLOCK_P,
        )
        g_mix, w_mix = _dot_operands(g, w_t, GX_16BIT)
        grad_x = tl.dot(w_mix, g_mix, input_precision=DOT_PRECISION)
        tl.store(
            gx_ptr + b * stride_gxb + offs_c64[:, None] * stride_gxc + offs_p64[None, :] * stride_gxp,
            grad_x.to(gx_ptr.dtype.element_ty),
            mask=mask_c[:, None] & mask_p[None, :],
        )
        acc_b += tl.sum(g.to(tl.float32), axis=1)
        g_red, x_red = _dot_operands(g, x_t, GW_16BIT)
        acc_w = tl.dot(g_red, x_red, acc_w, input_precision=DOT_PRECISION)
    partial = split.to(tl.int64) * channels
    tl.store(
        grad_w_ptr + (partial + offs_c64[:, None]) * channels + offs_c64[None, :],
        acc_w,
        mask=mask_c[:, None] & mask_c[None, :],
    )
    tl.store(grad_b_ptr + partial + offs_c64, acc_b, mask=mask_c)


# --------------------------------------------------------------------------------------------------
# Host side.

_HALF_TYPES = (torch.float16, torch.bfloat16)


def _float32_dot_precision(channels: int) -> str:
    """``input_precision`` of the float32 dots for ``channels`` channels (see the module docstring)."""
    return "tf32" if channels >= _TF32_MIN_CHANNELS and cudnn_conv_allows_tf32() else "ieee"


def _pixels_view(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as ``[B, C, H·W]``: a view when the pixel dimensions merge, else a contiguous copy."""
    return t.reshape(t.shape[0], t.shape[1], t.shape[2] * t.shape[3])


def _split_count(batch: int, channels: int, pixels: int, device: torch.device) -> int:
    """``SPLIT`` of the two-kernel ``∂L/∂W`` reduction (see the module docstring)."""
    target = sm_count(device) * _PROGRAMS_PER_SM
    blocks = triton.cdiv(channels, 64) ** 2  # a typical block count; the exact one depends on the config
    split = min(triton.cdiv(target, blocks), triton.cdiv(batch * pixels, _MIN_PIXELS_PER_SPLIT), _MAX_SPLIT)
    return max(1, split)


def _fused_split_count(batch: int, channels: int, pixels: int, device: torch.device) -> int:
    """``SPLIT`` of the fused backward: its programs, each owning all channels (see the constants)."""
    target = sm_count(device) * _PROGRAMS_PER_SM
    min_pixels = max(_MIN_PIXELS_PER_FUSED_SPLIT, _FUSED_PIXELS_PER_CHANNEL * channels)
    # Rounded down: every program gets at least min_pixels (the last one up to twice as many).
    return max(1, min(target, (batch * pixels) // min_pixels, _MAX_SPLIT))


def _channel_mix(
    source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, transpose: bool
) -> None:
    """``out[b, :, p] = W·source[b, :, p] (+ bias)`` (``Wᵀ`` when ``transpose``); ``[B, C, P]`` views."""
    batch, channels, pixels = source.shape
    dot_16bit = source.dtype in _HALF_TYPES
    if dot_16bit:
        weight = weight.to(source.dtype)
    stride_wo, stride_wc = weight.stride()
    if transpose:
        stride_wo, stride_wc = stride_wc, stride_wo

    def grid(meta):
        return (triton.cdiv(channels, meta["BLOCK_O"]) * triton.cdiv(pixels, meta["BLOCK_P"]) * batch,)

    # Without a bias, the weight stands in for its pointer, never read (HAS_BIAS is a constexpr).
    _channel_mix_kernel[grid](
        source, weight, weight if bias is None else bias, out,
        channels, pixels,
        *source.stride(),
        stride_wo, stride_wc,
        *out.stride(),
        HAS_BIAS=bias is not None, DOT_16BIT=dot_16bit, DOT_PRECISION=_float32_dot_precision(channels),
    )


def actnorm_invconv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y = W·x + b`` at every pixel.

    Args:
        x: ``[B, C, H, W]`` float16, bfloat16 or float32, any strides.
        weight: ``W'`` ``[C, C]`` float32 (any strides). bias: ``b'`` ``[C]`` float32.

    Returns:
        ``y`` ``[B, C, H, W]`` contiguous, dtype of ``x``, accumulated in float32 (dots: see the module
        docstring).
    """
    batch, channels, height, width = x.shape
    y = torch.empty((batch, channels, height, width), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _channel_mix(_pixels_view(x), weight, bias.contiguous(), y.view(batch, channels, height * width), False)
    return y


def actnorm_invconv_bwd(
    grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`actnorm_invconv_fwd`: ``(Wᵀ·g, Σ_{b,p} g·xᵀ, Σ_{b,p} g)``.

    Args:
        grad_y: ``g`` ``[B, C, H, W]``, any strides and float dtype.
        x: the forward's input ``[B, C, H, W]``, any strides.
        weight: ``W'`` ``[C, C]`` float32, any strides.

    Returns:
        ``grad_x`` ``[B, C, H, W]`` contiguous in the dtype of ``x``; ``grad_weight`` ``[C, C]`` and ``grad_bias``
        ``[C]`` in the dtype of ``weight``, accumulated in float32.
    """
    batch, channels, height, width = x.shape
    pixels = height * width
    grad_x = torch.empty((batch, channels, height, width), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        # Sums over no pixels.
        return grad_x, torch.zeros_like(weight), weight.new_zeros(channels)
    g = _pixels_view(grad_y)
    x_pixels = _pixels_view(x)
    grad_x_pixels = grad_x.view(batch, channels, pixels)
    precision = _float32_dot_precision(channels)
    reduce_16bit = g.dtype in _HALF_TYPES and g.dtype == x.dtype
    if channels <= _FUSED_MAX_CHANNELS:
        mix_16bit = g.dtype in _HALF_TYPES
        mix_weight = weight.to(g.dtype) if mix_16bit else weight
        split = _fused_split_count(batch, channels, pixels, x.device)
        grad_w = torch.empty((split, channels, channels), dtype=torch.float32, device=x.device)
        grad_b = torch.empty((split, channels), dtype=torch.float32, device=x.device)
        _fused_backward_kernel[(split,)](
            g, x_pixels, mix_weight, grad_x_pixels, grad_w, grad_b,
            batch, channels, pixels,
            *g.stride(),
            *x_pixels.stride(),
            *mix_weight.stride(),
            *grad_x_pixels.stride(),
            GX_16BIT=mix_16bit, GW_16BIT=reduce_16bit, DOT_PRECISION=precision,
            BLOCK_C=max(_MIN_BLOCK, triton.next_power_of_2(channels)),
        )
    else:
        _channel_mix(g, weight, None, grad_x_pixels, True)
        split = _split_count(batch, channels, pixels, x.device)
        grad_w = torch.empty((split, channels, channels), dtype=torch.float32, device=x.device)
        grad_b = torch.empty((split, channels), dtype=torch.float32, device=x.device)

        def grid(meta):
            return (triton.cdiv(channels, meta["BLOCK_O"]), triton.cdiv(channels, meta["BLOCK_C"]), split)

        _grad_weight_kernel[grid](
            g, x_pixels, grad_w, grad_b,
            batch, channels, pixels,
            *g.stride(),
            *x_pixels.stride(),
            DOT_16BIT=reduce_16bit, DOT_PRECISION=precision,
        )
    # One deterministic sum over the split axis (split = 1: the partial is the result).
    grad_weight = grad_w[0] if split == 1 else grad_w.sum(dim=0)
    grad_bias = grad_b[0] if split == 1 else grad_b.sum(dim=0)
    return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)
