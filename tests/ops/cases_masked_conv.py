"""The masked_conv op's cases for the generic op suite: masks A, B and V, one and three data channels, square and
one-row kernels, irregular sizes (``B = 1``, an empty batch, odd ``H`` and ``W``, an image smaller than the kernel,
channel counts past one Triton tile under the interpreter), strided and channels-last inputs, with and without bias.
Every input (``x``, ``weight``, ``bias``) gets its gradient checked."""

from __future__ import annotations

import torch

from fastflow.ops import masked_conv
from tests.ops.registry import OpCase, OpEntry, register


def masked_conv_leaves(shape, out_channels, kernel, layout, bias, device, dtype, generator) -> dict[str, torch.Tensor]:
    """``x [B, C_in, H, W]`` (``layout``: ``"contiguous"``, ``"strided"`` — a transposed buffer — or
    ``"channels_last"``), ``weight [C_out, C_in, kh, kw]`` at a trained layer's scale, and ``bias``."""
    batch, in_channels, height, width = shape
    kh, kw = kernel
    if layout == "strided":
        x = torch.randn(batch, in_channels, width, height, generator=generator).transpose(2, 3)
    else:
        x = torch.randn(batch, in_channels, height, width, generator=generator)
    weight = torch.randn(out_channels, in_channels, kh, kw, generator=generator) / (in_channels * kh * kw) ** 0.5
    tensors = {"x": x, "weight": weight}
    if bias:
        tensors["bias"] = 0.1 * torch.randn(out_channels, generator=generator)
    tensors = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    if layout == "channels_last":
        tensors["x"] = tensors["x"].contiguous(memory_format=torch.channels_last)
    return tensors


def _make_case(shape, out_channels, kernel, mask_type, data_channels=1, layout="contiguous", bias=True,
               opcheck=False, compile=False) -> OpCase:
    def leaves(device, dtype, generator):
        return masked_conv_leaves(shape, out_channels, kernel, layout, bias, device, dtype, generator)

    def call(x, weight, bias=None):
        return masked_conv(x, weight, bias, mask_type=mask_type, data_channels=data_channels)

    name = (f"{mask_type}{data_channels}-{'x'.join(map(str, shape))}-o{out_channels}-k{kernel[0]}x{kernel[1]}-{layout}"
            + ("" if bias else "-nobias"))
    return OpCase(name, leaves, call, opcheck=opcheck, compile=compile)


def _check(outputs, leaves, dtype, backend):
    (y,) = outputs if isinstance(outputs, tuple) else (outputs,)
    x, weight = leaves["x"], leaves["weight"]
    assert y.dtype == dtype
    assert y.shape == (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


register(OpEntry(
    op="masked_conv",
    outputs=("y",),
    cases=[
        _make_case((2, 1, 6, 5), 4, (7, 7), "A", opcheck=True, compile=True),  # the first layer, image < kernel
        _make_case((3, 5, 5, 4), 6, (3, 3), "B", opcheck=True),
        _make_case((2, 3, 5, 5), 6, (5, 5), "A", data_channels=3, opcheck=True),
        _make_case((1, 6, 4, 5), 9, (3, 3), "B", data_channels=3, layout="strided"),
        _make_case((2, 6, 3, 4), 3, (1, 1), "B", data_channels=3, bias=False),
        _make_case((2, 4, 5, 6), 5, (3, 5), "V", layout="channels_last", opcheck=True),
        _make_case((2, 4, 3, 7), 6, (1, 5), "A"),  # the horizontal stack's first layer (the CPU pads the input)
        _make_case((1, 5, 2, 6), 3, (1, 5), "A", bias=False),  # (the CPU crops the output)
        _make_case((1, 3, 4, 6), 5, (1, 3), "B", bias=False),
        _make_case((0, 3, 4, 4), 2, (3, 3), "A"),
        _make_case((1, 20, 3, 3), 19, (3, 3), "B", layout="strided"),  # channels past one interpreter tile
    ],
    check=_check,
))
