"""The coupling op's cases for the generic op suite: every mask, scale and direction, on irregular shapes (odd C, H
and W, B = 1, an empty batch, vectors) and strides (a transposed or strided ``x``, ``h_s``/``h_t`` as interleaved
views of one conditioner output, as Glow's layer has them)."""

from __future__ import annotations

import torch

from fastflow.ops import additive_coupling, affine_coupling
from fastflow.reference.numerics import accumulation_dtype
from tests.ops.registry import OpCase, OpEntry, register

# (shape of x, mask)
SHAPES = [
    ((3, 6, 5, 3), "channel"),
    ((1, 4, 1, 7), "channel"),
    ((0, 4, 3, 3), "channel"),
    ((5, 10), "channel"),
    ((3, 3, 5, 4), "checkerboard"),
    ((2, 5, 3, 3), "checkerboard"),
    ((4, 7), "checkerboard"),
]
SCALES = ["sigmoid", "exp", "additive"]
DIRECTIONS = [(False, False), (True, False), (False, True), (True, True)]  # (flip, inverse)


def conditioner_inputs(shape, mask, device, dtype, generator) -> dict[str, torch.Tensor]:
    """``x`` (a transposed or strided view) and the conditioner output ``h`` whose slices are ``h_s``, ``h_t``."""
    batch, channels = shape[0], shape[1]
    param_channels = channels // 2 if mask == "channel" else channels
    if len(shape) == 4:
        x = torch.randn(batch, channels, shape[3], shape[2], generator=generator).transpose(2, 3)
    else:
        x = torch.randn(batch, 2 * channels, generator=generator)[:, ::2]
    h = torch.randn(batch, 2 * param_channels, *shape[2:], generator=generator)
    return {"x": x.to(device=device, dtype=dtype), "h": h.to(device=device, dtype=dtype)}


def _call(mask, scale, flip, inverse, x, h):
    if scale == "additive":
        return additive_coupling(x, h[:, 0::2], mask=mask, flip=flip, inverse=inverse)
    return affine_coupling(x, h[:, 1::2], h[:, 0::2], mask=mask, scale=scale, flip=flip, inverse=inverse)


def _make_case(shape, mask, scale, flip, inverse) -> OpCase:
    def leaves(device, dtype, generator):
        return conditioner_inputs(shape, mask, device, dtype, generator)

    def call(x, h):
        return _call(mask, scale, flip, inverse, x, h)

    name = f"{scale}-{mask}-{shape}-flip{int(flip)}-inv{int(inverse)}".replace(" ", "")
    first = (flip, inverse) == (False, True) and shape == SHAPES[0][0]
    return OpCase(name, leaves, call, opcheck=first, compile=first and scale == "sigmoid")


def _check(outputs, leaves, dtype, backend):
    y, logdet = outputs
    x = leaves["x"]
    assert y.dtype == dtype and y.shape == x.shape
    assert logdet.shape == (x.shape[0],) and logdet.dtype == accumulation_dtype(dtype)


register(OpEntry(
    op="coupling",
    outputs=("y", "logdet"),
    cases=[
        _make_case(shape, mask, scale, flip, inverse)
        for shape, mask in SHAPES
        for scale in SCALES
        for flip, inverse in DIRECTIONS
    ],
    check=_check,
))
