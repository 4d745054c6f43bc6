"""Benchmark cases of PixelCNN's masked convolution (``fastflow.ops.masked_conv``) at MNIST's image size, 28×28,
batch 32, float32: the layers of a PixelCNN.

- ``A7x7-first-…``: the first layer, 7×7 mask A from the image (1 channel) to 128 feature maps;
- ``A7x7-…-c64``: a 7×7 mask A between 64-channel maps (Gated PixelCNN's and the original PixelCNN's wide layers);
- ``B3x3-…``: the residual blocks' 3×3 mask B, 64 and 128 channels.

Providers: ``reference`` is what a user writes, ``nn.Conv2d``'s ``conv2d`` with the masked weight
``weight * mask`` (the mask product included: it is part of every call of such a layer); ``compile`` its
``torch.compile``; ``cpu`` / ``triton`` / ``fastflow+compile`` the op, which visits only the live taps (the CPU path:
the convolution with the crop of the masked weight that holds them, 4×7 of 7×7, 2×3 of 3×3). Backward: the
gradients of ``x``, ``weight`` and ``bias``.

Bytes: ``x`` and the weight read once, ``y`` written once (fwd); ``grad_y``, ``x``, the weight read and the three
gradients written (bwd). FLOPs: ``2·B·H·W·C_out·C_in·T`` forward for the ``T`` live taps (the useful work: the dense
reference does ``kh·kw`` taps' worth), twice that backward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from bench.harness import Case, register
from fastflow import ops
from fastflow.reference.masked_conv import conv_mask, live_taps

BATCH, SIZE = 32, 28


def _inputs(batch, in_channels, out_channels, kernel, device, dtype, generator) -> dict[str, torch.Tensor]:
    x = torch.randn(batch, in_channels, SIZE, SIZE, device=device, generator=generator).to(dtype)
    fan_in = in_channels * kernel * kernel
    weight = (torch.randn(out_channels, in_channels, kernel, kernel, device=device, generator=generator)
              / fan_in**0.5).to(dtype)
    bias = 0.1 * torch.randn(out_channels, device=device, generator=generator).to(dtype)
    return {"x": x, "weight": weight, "bias": bias}


def _plain(mask_type, x, weight, bias):
    """``nn.Conv2d`` with a mask: the layer of every public PixelCNN (the mask a buffer, multiplied per call)."""
    mask = conv_mask(weight.shape[0], weight.shape[1], tuple(weight.shape[2:]), mask_type, dtype=weight.dtype,
                     device=weight.device)
    k = weight.shape[2]
    return F.conv2d(x, weight * mask, bias, padding=k // 2)


def _fastflow(mask_type, x, weight, bias):
    return ops.masked_conv(x, weight, bias, mask_type=mask_type)


def _counts(batch, in_channels, out_channels, kernel, mask_type, dtype) -> tuple[dict, dict]:
    e = torch.empty((), dtype=dtype).element_size()
    pixels = batch * SIZE * SIZE
    x, y = pixels * in_channels, pixels * out_channels
    w = out_channels * in_channels * kernel * kernel + out_channels
    fwd_bytes = e * (x + w + y)
    bwd_bytes = e * (y + x + w + x + w)
    taps = len(live_taps((kernel, kernel), mask_type))
    fwd = 2 * pixels * out_channels * in_channels * taps
    return ({"fwd": fwd_bytes, "bwd": bwd_bytes, "full": fwd_bytes + bwd_bytes},
            {"fwd": fwd, "bwd": 2 * fwd, "full": 3 * fwd})


def make_case(name: str, in_channels: int, out_channels: int, kernel: int, mask_type: str, *,
              batch: int = BATCH, dtype: torch.dtype = torch.float32, quick: bool = False) -> Case:
    moved, flops = _counts(batch, in_channels, out_channels, kernel, mask_type, dtype)
    return Case(
        op="masked_conv",
        name=f"{name}-B{batch}x{in_channels}x{SIZE}x{SIZE}-o{out_channels}-f32",
        make_inputs=functools.partial(_inputs, batch, in_channels, out_channels, kernel),
        fns={"reference": functools.partial(_plain, mask_type), "fastflow": functools.partial(_fastflow, mask_type)},
        bytes=moved,
        flops=flops,
        dtype=dtype,
        quick=quick,
        params={"batch": batch, "in_channels": in_channels, "out_channels": out_channels, "kernel": kernel,
                "mask_type": mask_type, "size": SIZE, "live_taps": len(live_taps((kernel, kernel), mask_type))},
    )


@register("masked_conv")
def cases(device: torch.device) -> list[Case]:
    return [
        make_case("A7x7-first", 1, 128, 7, "A", quick=True),
        make_case("A7x7", 64, 64, 7, "A", quick=True),
        make_case("B3x3", 64, 64, 3, "B", quick=True),
        make_case("B3x3", 128, 128, 3, "B", quick=True),
    ]
