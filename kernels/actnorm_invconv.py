"""Triton kernels of the fused ActNorm + invertible 1×1 convolution op: the per-pixel channel mix and its backward.

``fastflow.ops.actnorm_invconv`` folds ActNorm and the LU weight into one ``C×C`` matrix ``W`` and a bias ``b``
(``fastflow.reference.actnorm_invconv.folded_weight``) and dispatches here when the ``triton`` backend runs a
call; the kernel contract is that module's docstring. The work is three GEMMs over the pixels:

- forward (:func:`actnorm_invconv_fwd`): ``y = W·x + b`` at every pixel;
- backward (:func:`actnorm_invconv_bwd`): ``∂L/∂x = Wᵀ·g`` at every pixel (the forward kernel again, with the
  transposed weight given by its strides, no copy), and ``∂L/∂W = Σ_{b,p} g·xᵀ``, ``∂L/∂b = Σ_{b,p} g``.

Layout of the work. ``x [B, C, H, W]`` is seen as ``[B, C, P]`` with ``P = H·W`` pixels (a view whenever the
pixel dimensions merge, channels-last included; a contiguous copy otherwise). Per sample, the forward is the GEMM
``[C, C] × [C, P]``: each program computes one ``[BLOCK_O, BLOCK_P]`` tile of ``y`` (output channels × pixels),
looping over the input channels in ``BLOCK_C`` steps with ``tl.dot`` in float32 (masked loads, ``other=0``,
so that any ``C`` and ``P`` work: the dot needs blocks of at least 16), and adds the bias in the epilogue. The
grid is one flat axis ordered (output-channel block, pixel block, sample), output-channel blocks fastest so that
the programs sharing a tile of ``x`` run together (it stays in L2); one axis because CUDA caps the second and
third grid axes at 65535, which large images or batches would pass. Element offsets are int64.

``∂L/∂W`` is a split-K reduction over the ``B·P`` (sample, pixel) pairs: the grid is ``(C / BLOCK_O, C / BLOCK_C,
SPLIT)``; program ``(i, j, s)`` owns the ``[BLOCK_O, BLOCK_C]`` block ``(i, j)`` of ``∂L/∂W`` and the ``s``-th
contiguous run of (sample, pixel block) items, accumulates ``g·xᵀ`` over it with ``tl.dot`` and writes a float32
partial to ``[SPLIT, C, C]``; the programs of the first column block (``j = 0``) also write the row sums of ``g``
to ``[SPLIT, C]``, the partials of ``∂L/∂b``. One ``sum`` over the split axis finishes both: deterministic, no
atomics. ``SPLIT`` depends only on the sizes and the GPU (not on the autotuned blocks), so that the partial
buffers can be allocated before autotuning.

The dots run in IEEE float32 (``input_precision="ieee"``): TF32 would lose three decimal digits, more than the
op's float32 contract allows.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# tl.dot's smallest block along every dimension.
_MIN_BLOCK = 16
# ∂L/∂W: aim for this many programs per SM in all, each reducing at least _MIN_PIXELS_PER_SPLIT (sample, pixel)
# pairs, so that small reductions do not pay for partials they do not need. Under the interpreter a few splits
# exercise the multi-split path on small inputs.
_PROGRAMS_PER_SM = 4
_MIN_PIXELS_PER_SPLIT = 16 if _INTERPRETED else 512
_MAX_SPLIT = 3 if _INTERPRETED else 1024
_DOT_PRECISION = "ieee"


def _mix_configs() -> list[triton.Config]:
    """Autotuning space of the channel mix: ``[BLOCK_O, BLOCK_P]`` output tile, ``BLOCK_C`` input-channel step."""
    if _INTERPRETED:
        return [triton.Config({"BLOCK_O": 16, "BLOCK_P": 16, "BLOCK_C": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_O": block_o, "BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=warps, num_stages=stages)
        for block_o, block_p, block_c, warps, stages in (
            (16, 256, 16, 4, 3),
            (32, 128, 32, 4, 3),
            (32, 256, 32, 8, 3),
            (64, 128, 32, 4, 3),
            (64, 64, 32, 4, 4),
            (128, 128, 32, 8, 3),
        )
    ]


def _grad_weight_configs() -> list[triton.Config]:
    """Autotuning space of ``∂L/∂W``: ``[BLOCK_O, BLOCK_C]`` output block, ``BLOCK_P`` pixel step."""
    if _INTERPRETED:
        return [triton.Config({"BLOCK_O": 16, "BLOCK_C": 16, "BLOCK_P": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_O": block_o, "BLOCK_C": block_c, "BLOCK_P": block_p}, num_warps=warps, num_stages=stages)
        for block_o, block_c, block_p, warps, stages in (
            (16, 16, 128, 4, 3),
            (32, 32, 64, 4, 3),
            (32, 32, 128, 4, 3),
            (64, 64, 32, 4, 3),
            (64, 64, 64, 4, 3),
            (128, 128, 32, 8, 3),
        )
    ]


def _prune_channel_blocks(configs, named_args, **kwargs):
    """Drop configs whose channel blocks exceed the (padded) channel count: they only compute masked zeros."""
    limit = max(_MIN_BLOCK, triton.next_power_of_2(named_args["channels"]))
    kept = [c for c in configs if c.kwargs["BLOCK_O"] <= limit and c.kwargs["BLOCK_C"] <= limit]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_O"], c.kwargs["BLOCK_C"]))]


# --------------------------------------------------------------------------------------------------
# Kernels.


@triton.autotune(
    configs=_mix_configs(),
    key=["channels", "pixels", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": _prune_channel_blocks},
)
@triton.jit
def _channel_mix_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    channels, pixels,
    stride_xb, stride_xc, stride_xp,
    stride_wo, stride_wc,
    stride_yb, stride_yc, stride_yp,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: the tile ``y[b, o-block, p-block] = Σ_c W[o, c]·x[b, c, p] (+ bias[o])``.

    ``x`` and ``y`` are ``[B, C, P]`` strided views; ``W`` is ``[C, C]`` with strides ``(stride_wo, stride_wc)``
    (swapped for ``Wᵀ``); ``bias`` is ``[C]`` contiguous, read only when ``HAS_BIAS``.
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
    offs_p64 = offs_p.to(tl.int64)
    x_base = x_ptr + b * stride_xb
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for first_c in range(0, channels, BLOCK_C):
        offs_c = first_c + tl.arange(0, BLOCK_C)
        mask_c = offs_c < channels
        w = tl.load(
            w_ptr + offs_o[:, None] * stride_wo + offs_c[None, :] * stride_wc,
            mask=mask_o[:, None] & mask_c[None, :],
            other=0.0,
        ).to(tl.float32)
        x = tl.load(
            x_base + offs_c.to(tl.int64)[:, None] * stride_xc + offs_p64[None, :] * stride_xp,
            mask=mask_c[:, None] & mask_p[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = tl.dot(w, x, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)
        acc += bias[:, None]
    y_offsets = offs_o.to(tl.int64)[:, None] * stride_yc + offs_p64[None, :] * stride_yp
    tl.store(
        y_ptr + b * stride_yb + y_offsets,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_o[:, None] & mask_p[None, :],
    )


@triton.autotune(
    configs=_grad_weight_configs(),
    key=["batch", "channels", "pixels"],
    prune_configs_by={"early_config_prune": _prune_channel_blocks},
)
@triton.jit
def _grad_weight_kernel(
    g_ptr, x_ptr, grad_w_ptr, grad_b_ptr,
    batch, channels, pixels,
    stride_gb, stride_gc, stride_gp,
    stride_xb, stride_xc, stride_xp,
    DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program: block ``(o, c)`` of ``Σ g·xᵀ`` over the ``s``-th run of (sample, pixel block) items.

    ``g`` and ``x`` are ``[B, C, P]`` strided views. Writes ``grad_w[s, o-block, c-block]`` (``[SPLIT, C, C]``
    float32, contiguous) and, for ``c``-block 0, ``grad_b[s, o-block] = Σ g`` (``[SPLIT, C]``).
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
    blocks_p = tl.cdiv(pixels, BLOCK_P)
    items = batch * blocks_p
    per_split = tl.cdiv(items, tl.num_programs(2))
    first = split * per_split
    last = tl.minimum(first + per_split, items)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    # The bias row sums cost one add per loaded g: every program keeps them, the j = 0 column stores them.
    acc_bias = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for item in range(first, last):
        b = item // blocks_p
        offs_p = (item - b * blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < pixels
        offs_p64 = offs_p.to(tl.int64)
        b = b.to(tl.int64)
        g = tl.load(
            g_ptr + b * stride_gb + offs_o64[:, None] * stride_gc + offs_p64[None, :] * stride_gp,
            mask=mask_o[:, None] & mask_p[None, :],
            other=0.0,
        ).to(tl.float32)
        # xᵀ loaded directly as [BLOCK_P, BLOCK_C]: the dot needs no transpose.
        x_t = tl.load(
            x_ptr + b * stride_xb + offs_p64[:, None] * stride_xp + offs_c64[None, :] * stride_xc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = tl.dot(g, x_t, acc, input_precision=DOT_PRECISION)
        acc_bias += tl.sum(g, axis=1)
    partial = split.to(tl.int64) * channels * channels
    tl.store(
        grad_w_ptr + partial + offs_o64[:, None] * channels + offs_c64[None, :],
        acc,
        mask=mask_o[:, None] & mask_c[None, :],
    )
    if block_c == 0:
        tl.store(grad_b_ptr + split.to(tl.int64) * channels + offs_o64, acc_bias, mask=mask_o)


# --------------------------------------------------------------------------------------------------
# Host side.


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pixels_view(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as ``[B, C, H·W]``: a view when the pixel dimensions merge, else a contiguous copy."""
    return t.reshape(t.shape[0], t.shape[1], t.shape[2] * t.shape[3])


def _split_count(batch: int, channels: int, pixels: int, device: torch.device) -> int:
    """``SPLIT`` of the ``∂L/∂W`` reduction (see the module docstring)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = _sm_count(index) * _PROGRAMS_PER_SM
    else:
        target = _PROGRAMS_PER_SM
    blocks = triton.cdiv(channels, 64) ** 2  # a typical block count; the exact one depends on the config
    split = min(triton.cdiv(target, blocks), triton.cdiv(batch * pixels, _MIN_PIXELS_PER_SPLIT), _MAX_SPLIT)
    return max(1, split)


def _channel_mix(
    source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, transpose: bool
) -> None:
    """``out[b, :, p] = W·source[b, :, p] (+ bias)`` (``Wᵀ`` when ``transpose``); ``[B, C, P]`` views."""
    batch, channels, pixels = source.shape
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
        HAS_BIAS=bias is not None, DOT_PRECISION=_DOT_PRECISION,
    )


def actnorm_invconv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y = W·x + b`` at every pixel.

    Args:
        x: ``[B, C, H, W]`` float16, bfloat16 or float32, any strides.
        weight: ``W'`` ``[C, C]`` float32 (any strides). bias: ``b'`` ``[C]`` float32.

    Returns:
        ``y`` ``[B, C, H, W]`` contiguous, dtype of ``x``, computed in float32.
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
    _channel_mix(g, weight, None, grad_x.view(batch, channels, pixels), True)
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
        DOT_PRECISION=_DOT_PRECISION,
    )
    # One deterministic sum over the split axis (split = 1: the partial is the result).
    grad_weight = grad_w[0] if split == 1 else grad_w.sum(dim=0)
    grad_bias = grad_b[0] if split == 1 else grad_b.sum(dim=0)
    return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)
