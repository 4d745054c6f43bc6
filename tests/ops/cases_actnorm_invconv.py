"""The actnorm_invconv op's cases for the generic op suite: both directions, with and without ActNorm, on odd
C/H/W, C = 1 and C = 17 (one channel past a Triton block), 35 pixels (several pixel blocks under the interpreter),
B = 1, an empty batch, and transposed, contiguous and channels-last ``x``. The LU and ActNorm parameters are
leaves in the op's accumulation dtype (float32, float64 for float64 inputs), as the layers hold them."""

from __future__ import annotations

import itertools

import torch

from fastflow.ops import actnorm_invconv
from fastflow.reference.numerics import accumulation_dtype
from tests.ops.registry import OpCase, OpEntry, register

# (B, C, H, W), layout of x
SHAPES = [
    ((2, 3, 5, 3), "transposed"),
    ((1, 12, 5, 7), "transposed"),
    ((0, 5, 3, 3), "contiguous"),
    ((3, 1, 2, 3), "transposed"),
    ((2, 17, 3, 3), "contiguous"),
    ((2, 5, 1, 7), "channels_last"),
]
DIRECTIONS = list(itertools.product([False, True], [True, False]))  # (inverse, actnorm)


def _leaves(shape, layout, actnorm, device, dtype, generator):
    """``x`` in the given layout and random LU / ActNorm parameters (``perm`` and the signs are fixed per case)."""
    batch, channels, height, width = shape
    if layout == "transposed":
        x = torch.randn(batch, channels, width, height, generator=generator).transpose(2, 3)
    else:
        x = torch.randn(shape, generator=generator)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    acc = accumulation_dtype(dtype)
    leaves = {
        "x": x.to(device=device, dtype=dtype),
        "lower": 0.3 * torch.randn(channels, channels, generator=generator),
        "upper": 0.3 * torch.randn(channels, channels, generator=generator),
        "log_s": 0.2 * torch.randn(channels, generator=generator),
    }
    if actnorm:
        leaves["log_scale"] = 0.3 * torch.randn(channels, generator=generator)
        leaves["bias"] = torch.randn(channels, generator=generator)
    return {name: t if name == "x" else t.to(device=device, dtype=acc) for name, t in leaves.items()}


def _constants(channels: int, seed: int):
    """A random permutation and random signs of ``s``: buffers of the layer, not differentiated."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(channels, generator=generator)
    sign_s = torch.where(torch.rand(channels, generator=generator) < 0.5, -1.0, 1.0)
    return perm, sign_s


def _make_case(shape, layout, inverse, actnorm) -> OpCase:
    name = f"{shape}-{layout}-inv{int(inverse)}-actnorm{int(actnorm)}".replace(" ", "")

    def leaves(device, dtype, generator):
        return _leaves(shape, layout, actnorm, device, dtype, generator)

    perm, sign_s = _constants(shape[1], seed=shape[1])

    def call(x, lower, upper, log_s, log_scale=None, bias=None):
        return actnorm_invconv(
            x, log_scale, bias, lower, upper, log_s, perm=perm.to(x.device),
            sign_s=sign_s.to(device=x.device, dtype=log_s.dtype), inverse=inverse,
        )

    first = shape == SHAPES[0][0] and actnorm
    return OpCase(name, leaves, call, opcheck=first, compile=first and inverse)


def _check(outputs, leaves, dtype, backend):
    y, logdet = outputs
    x = leaves["x"]
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(), "every backend returns y contiguous"
    assert logdet.shape == (x.shape[0],) and logdet.dtype == accumulation_dtype(dtype)


register(OpEntry(
    op="actnorm_invconv",
    outputs=("y", "logdet"),
    cases=[_make_case(shape, layout, inverse, actnorm) for shape, layout in SHAPES for inverse, actnorm in DIRECTIONS],
    check=_check,
))
