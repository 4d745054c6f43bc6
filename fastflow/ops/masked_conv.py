"""The fused masked convolution of PixelCNN: ``conv2d(x, weight ⊙ mask, bias)`` visiting only the unmasked taps.

``masked_conv(x, weight, bias, mask_type=..., data_channels=...)`` checks its arguments and calls the custom op
``fastflow::masked_conv_fwd``, whose backward is ``fastflow::masked_conv_bwd``; both come from the one declaration
``MASKED_CONV`` (``fastflow.ops.declaration``). The masks and the specification are
``fastflow.reference.masked_conv``.

Backends:

- ``reference``: ``conv2d`` with the whole masked weight (and its ``convolution_backward``);
- ``cpu``: the convolution with the crop of the masked weight that holds every live tap (rows up to the centre:
  a 7×7 kernel becomes 4×7, 28 taps instead of 49; a one-row kernel its live columns), through oneDNN, forward
  and backward — a smaller convolution of the same result, the fastest decomposition measured on this CPU
  (``bench/bench_masked_conv.py``);
- ``triton``: an implicit-GEMM kernel over the live taps only (``kernels/masked_conv.py``).

Kernel contract (shared by every backend):

- ``masked_conv_fwd(x [B, C_in, H, W], weight [C_out, C_in, kh, kw], bias [C_out] or None, mask_type, data_channels)
  -> y [B, C_out, H, W]`` in ``x``'s dtype (16-bit inputs accumulate in float32), channels-last when ``x`` is
  (else contiguous). ``weight`` is the layer's unmasked parameter: the stage applies the mask.
- ``masked_conv_bwd(grad_y, x, weight, mask_type, data_channels) -> (grad_x, grad_weight, grad_bias [C_out])``:
  ``grad_weight`` is zero at every masked tap (the masked entries never change under gradient descent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow import _backends
from fastflow._checks import check_floating
from fastflow.ops.declaration import FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference import masked_conv as reference
from fastflow.reference.masked_conv import MASK_TYPES, conv_mask, live_box, live_taps

__all__ = ["MASKED_CONV", "check_masked_conv", "masked_conv"]

_LOW = frozenset({torch.float16, torch.bfloat16, torch.float32})


def _memory_format(x: Tensor) -> torch.memory_format:
    """The layout of a result made for ``x``: channels-last when ``x`` is (and is not also plain contiguous)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _mask(weight: Tensor, mask_type: str, data_channels: int) -> Tensor:
    out_channels, in_channels, kh, kw = weight.shape
    return conv_mask(out_channels, in_channels, (kh, kw), mask_type, data_channels, dtype=weight.dtype,
                     device=weight.device)


# --------------------------------------------------------------------------------------------------
# Reference stages (the fallback) and fake functions.


def _reference_fwd(x, weight, bias, mask_type, data_channels):
    y = reference.masked_conv2d(x, weight, bias, mask_type, data_channels)
    return y.contiguous(memory_format=_memory_format(x))


def _conv_backward(grad_y, x, weight, padding, mask, out_size):
    """``convolution_backward`` of ``conv2d(x, weight, padding=padding)`` whose output was cropped to ``out_size``
    (the bottom/right rows of the full output got no gradient): ``(grad_x, grad_weight ⊙ mask, grad_bias)``, the
    weight gradient contiguous, ``grad_x`` as the convolution gives it."""
    full = grad_y
    height, width = out_size
    extra_h, extra_w = height - grad_y.shape[2], width - grad_y.shape[3]
    if extra_h or extra_w:
        full = F.pad(grad_y, (0, extra_w, 0, extra_h))
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        full, x, weight, [weight.shape[0]], [1, 1], list(padding), [1, 1], False, [0, 0], 1, [True, True, True]
    )
    return grad_x, (grad_w * mask).contiguous(), grad_b


def _reference_bwd(grad_y, x, weight, mask_type, data_channels):
    mask = _mask(weight, mask_type, data_channels)
    kh, kw = weight.shape[2:]
    grad_x, grad_w, grad_b = _conv_backward(grad_y, x, weight * mask, (kh // 2, kw // 2), mask, x.shape[2:])
    return grad_x.contiguous(memory_format=_memory_format(x)), grad_w, grad_b


def _fake_fwd(x, weight, bias, mask_type, data_channels):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


def _fake_bwd(grad_y, x, weight, mask_type, data_channels):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    return grad_x, weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],))


# --------------------------------------------------------------------------------------------------
# The CPU path: the crop of the masked weight that holds every live tap.


def _crop(weight: Tensor, mask_type: str, data_channels: int) -> tuple[Tensor, Tensor]:
    """``(weight ⊙ mask, mask)`` cut to :func:`live_box`: ``[C_out, C_in, rows, cols]``."""
    rows, cols = live_box(tuple(weight.shape[2:]), mask_type, data_channels)
    mask = _mask(weight, mask_type, data_channels)[:, :, :rows, :cols]
    return weight[:, :, :rows, :cols] * mask, mask


def _pads(weight: Tensor, cropped: Tensor) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) that make an unpadded convolution with ``cropped`` the masked
    "same" convolution: the kernel's half-height on top (none below: no live row is under the centre), its
    half-width on the left, and on the right what the crop's last column reaches (``-1`` drops the image's last
    column, which a one-row mask A never sees)."""
    kh, kw = weight.shape[2:]
    rows, cols = cropped.shape[2:]
    return kw // 2, cols - 1 - kw // 2, kh // 2, rows - 1 - kh // 2


def _pads_input(weight: Tensor) -> bool:
    """Which of two equal decompositions runs: pad the input (a copy of ``x``) and convolve unpadded, or convolve
    with the "same" padding and crop the output (a copy of ``y``, and ``kh // 2`` rows below computed for nothing;
    the backward pads ``grad_y`` instead). Measured on this CPU (oneDNN, 28×28, batch 32, one thread): padding the
    input is 4–5× faster forward and 2.5× backward for a first layer (1 → 128 channels: the output crop costs more
    than the convolution) and 1.5× faster backward for a 7×7 between 64 channels (equal forward); cropping is
    20 % faster backward and 3 % forward for a 3×3 between 128 channels."""
    out_channels, in_channels, kh = weight.shape[:3]
    return in_channels < out_channels or kh > 3


def _cpu_fwd(x, weight, bias, mask_type, data_channels):
    cropped, _ = _crop(weight, mask_type, data_channels)
    if _pads_input(weight):
        y = F.conv2d(F.pad(x, _pads(weight, cropped)), cropped, bias)
    else:
        kh, kw = weight.shape[2:]
        y = F.conv2d(x, cropped, bias, padding=(kh // 2, kw // 2))[:, :, : x.shape[2], : x.shape[3]]
    return y.contiguous(memory_format=_memory_format(x))


def _cpu_bwd(grad_y, x, weight, mask_type, data_channels):
    cropped, mask = _crop(weight, mask_type, data_channels)
    rows, cols = cropped.shape[2:]
    height, width = x.shape[2:]
    if _pads_input(weight):
        left, right, top, _ = pads = _pads(weight, cropped)
        grad_x, grad_cropped, grad_b = _conv_backward(grad_y, F.pad(x, pads), cropped, (0, 0), mask, (height, width))
        grad_x = grad_x[:, :, top : top + height, left : left + width]
        if right < 0:  # the column the pad dropped gets no gradient
            grad_x = F.pad(grad_x, (0, -right))
    else:
        kh, kw = weight.shape[2:]
        out_size = (height + 2 * (kh // 2) - rows + 1, width + 2 * (kw // 2) - cols + 1)
        grad_x, grad_cropped, grad_b = _conv_backward(grad_y, x, cropped, (kh // 2, kw // 2), mask, out_size)
    grad_w = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    grad_w[:, :, :rows, :cols] = grad_cropped
    return grad_x.contiguous(memory_format=_memory_format(x)), grad_w, grad_b


# --------------------------------------------------------------------------------------------------
# Autograd and the declaration.


def _setup_context(ctx, inputs, output):
    x, weight, bias, mask_type, data_channels = inputs
    ctx.save_for_backward(x, weight)
    ctx.mask_type, ctx.data_channels, ctx.has_bias = mask_type, data_channels, bias is not None


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = MASKED_CONV.call("bwd", grad_y.contiguous(memory_format=_memory_format(x)), x, weight,
                                              ctx.mask_type, ctx.data_channels, backend=ctx.backend)
    return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None


MASKED_CONV = Op(
    "masked_conv",
    stages={
        "fwd": Stage("(Tensor x, Tensor weight, Tensor? bias, str mask_type, int data_channels) -> Tensor",
                     fake=_fake_fwd, lead="x"),
        "bwd": Stage("(Tensor grad_y, Tensor x, Tensor weight, str mask_type, int data_channels) "
                     "-> (Tensor, Tensor, Tensor)", fake=_fake_bwd, lead="x"),
    },
    backends={
        "reference": Implementation(FLOATS, {"fwd": _reference_fwd, "bwd": _reference_bwd}),
        "cpu": Implementation(FLOATS, {"fwd": _cpu_fwd, "bwd": _cpu_bwd}),
        "triton": Implementation(_LOW, "fastflow.kernels.masked_conv"),
    },
    autograd=Autograd(_setup_context, _backward),
)


# --------------------------------------------------------------------------------------------------
# Argument checks and the public function.


def check_masked_conv(in_channels: int, out_channels: int, kernel_size: tuple[int, int], mask_type: object,
                      data_channels: object) -> None:
    """A ``ValueError``/``TypeError`` naming the argument unless the mask is well defined: odd kernel sizes, a mask
    type of ``"A"``, ``"B"``, ``"V"``, ``data_channels`` 1 or 3 (3: channel counts divisible by 3), and a live tap."""
    if not isinstance(mask_type, str) or mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {', '.join(map(repr, MASK_TYPES))}, got {mask_type!r}")
    if isinstance(data_channels, bool) or data_channels not in (1, 3):
        raise ValueError(f"data_channels must be 1 (grey) or 3 (R, G, B), got {data_channels!r}")
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd in both dimensions (the centre tap is the output's own pixel), "
                         f"got {(kh, kw)}")
    if data_channels == 3:
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels)):
            if n % 3:
                raise ValueError(f"{name} must be divisible by 3 with data_channels=3 (one third per colour), "
                                 f"got {n}")
    if not live_taps((kh, kw), mask_type, data_channels):
        raise ValueError(f"a {kh}×{kw} mask {mask_type} with data_channels=1 sees nothing (its only tap is the "
                         "centre, which mask A hides); use mask B or a larger kernel")


def _autocast(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under autocast the op runs in the autocast dtype, as ``conv2d`` does (a custom op is not on autocast's
    lists, so without this float32 weights would meet a bf16 activation and be refused)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t: Tensor | None) -> Tensor | None:
        return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

    return cast(x), cast(weight), cast(bias)


def masked_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, mask_type: str = "B",
                data_channels: int = 1) -> Tensor:
    """PixelCNN's masked convolution ``conv2d(x, weight ⊙ mask, bias, padding=(kh // 2, kw // 2))``.

    Args:
        x: ``[B, C_in, H, W]`` float (any strides; channels-last stays channels-last).
        weight: ``[C_out, C_in, kh, kw]``, odd ``kh`` and ``kw``, the unmasked weight (its masked entries are
            ignored and get a zero gradient); one dtype and device with ``x``.
        bias: ``[C_out]`` or None.
        mask_type: ``"A"`` (taps strictly before the centre in raster order), ``"B"`` (the centre too) or ``"V"``
            (the rows above and the whole centre row: the Gated PixelCNN's vertical stack).
        data_channels: 1, or 3 for R→G→B channel groups at the centre tap (``fastflow.reference.masked_conv``).

    Returns:
        ``y [B, C_out, H, W]`` in ``x``'s dtype; differentiable in ``x``, ``weight`` and ``bias``.

    Example:
        >>> x, w = torch.randn(2, 1, 5, 5), torch.randn(8, 1, 3, 3)
        >>> masked_conv(x, w, mask_type="A").shape
        torch.Size([2, 8, 5, 5])
    """
    check_floating("x", x)
    check_floating("weight", weight)
    x, weight, bias = _autocast(x, weight, bias)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C_in, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [C_out, C_in, kh, kw], got shape {tuple(weight.shape)}")
    out_channels, in_channels, kh, kw = weight.shape
    if x.shape[1] != in_channels:
        raise ValueError(f"x must have {in_channels} channels (weight's C_in), got shape {tuple(x.shape)}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x must have at least one row and one column, got shape {tuple(x.shape)}")
    if min(out_channels, in_channels) < 1:
        raise ValueError(f"weight must have at least one input and one output channel, got {tuple(weight.shape)}")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but x is on {x.device}; put them on one device")
        if value.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but x has {x.dtype}; they must match")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},) (one per output channel), got {tuple(bias.shape)}")
    check_masked_conv(in_channels, out_channels, (kh, kw), mask_type, data_channels)
    if _backends.plain_reference():
        return reference.masked_conv2d(x, weight, bias, mask_type, data_channels)
    return MASKED_CONV.call("fwd", x, weight, bias, mask_type, data_channels)
