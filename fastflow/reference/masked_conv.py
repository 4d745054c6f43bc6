"""PixelCNN's masked convolution (van den Oord et al. 2016): the masks, and the convolution with the masked weight.

Every masked convolution here is a stride-1, "same"-padded ``conv2d`` (padding ``(kh // 2, kw // 2)``, kernel sizes
odd) whose weight ``[C_out, C_in, kh, kw]`` is multiplied by a fixed 0/1 mask. The centre tap ``(kh // 2, kw // 2)``
is the output's own position; in raster order (rows top to bottom, left to right inside a row):

- ``"A"``: the taps strictly before the centre (the rows above, and the centre row left of the centre) — the first
  layer's, so that an output never sees its own pixel;
- ``"B"``: those and the centre tap — every later layer's (a feature may see its own position's features, which
  themselves saw only earlier pixels);
- ``"V"``: the rows above and the whole centre row — the vertical stack of the Gated PixelCNN, whose output at row
  ``i`` the model shifts down one row before it reaches the horizontal stack (so that it then sees rows ``< i``).

With ``data_channels=3`` the input and output channels each fall in three contiguous groups R, G, B (channel ``c``
of ``n`` is in group ``c // (n / 3)``, ``n`` divisible by 3); at the centre tap an output of group ``g`` sees the
inputs of the groups ``< g`` under mask A and ``<= g`` under mask B, so that inside a pixel R comes before G before B.
Mask V ignores the channel groups (the centre row is never seen after the shift).

The fast paths visit only the *live* taps (:func:`live_taps`: a 7×7 mask A has 24 of 49); this module's
:func:`masked_conv2d` is the specification they are compared with.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MASK_TYPES", "conv_mask", "live_box", "live_taps", "masked_conv2d"]

MASK_TYPES = ("A", "B", "V")


def live_taps(kernel_size: tuple[int, int], mask_type: str, data_channels: int = 1) -> list[tuple[int, int]]:
    """The spatial taps ``(row, col)`` of a ``kh × kw`` kernel that the mask keeps, wholly or (the centre tap with
    three data channels) for some channel pairs, in raster order."""
    kh, kw = kernel_size
    ch, cw = kh // 2, kw // 2
    taps = [(r, c) for r in range(ch) for c in range(kw)]
    if mask_type == "V":
        return taps + [(ch, c) for c in range(kw)]
    keeps_centre = mask_type == "B" or data_channels == 3
    return taps + [(ch, c) for c in range(cw + (1 if keeps_centre else 0))]


def live_box(kernel_size: tuple[int, int], mask_type: str, data_channels: int = 1) -> tuple[int, int]:
    """``(rows, cols)``: the smallest top-left corner of the kernel that holds every live tap (the CPU path
    convolves with this crop of the masked weight): the rows up to the centre and, for a one-row kernel, the
    columns up to the last live one."""
    taps = live_taps(kernel_size, mask_type, data_channels)
    if not taps:
        return 0, 0
    return max(r for r, _ in taps) + 1, max(c for _, c in taps) + 1


def _groups(n: int) -> Tensor:
    return torch.arange(n) // (n // 3)


@functools.lru_cache(maxsize=256)
def _mask_cpu(out_channels: int, in_channels: int, kh: int, kw: int, mask_type: str, data_channels: int) -> Tensor:
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    for r, c in live_taps((kh, kw), mask_type, data_channels):
        mask[:, :, r, c] = 1
    ch, cw = kh // 2, kw // 2
    if mask_type != "V" and data_channels == 3:  # the centre tap's channel mask: R before G before B
        out_group, in_group = _groups(out_channels)[:, None], _groups(in_channels)[None, :]
        seen = in_group < out_group if mask_type == "A" else in_group <= out_group
        mask[:, :, ch, cw] = seen.float()
    return mask


def conv_mask(out_channels: int, in_channels: int, kernel_size: tuple[int, int], mask_type: str,
              data_channels: int = 1, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """The 0/1 mask ``[C_out, C_in, kh, kw]`` of a masked convolution (see the module docstring), in ``dtype``.

    Arguments are the caller's to check (``fastflow.nn.MaskedConv2d`` checks them): odd kernel sizes, a mask type
    of :data:`MASK_TYPES`, ``data_channels`` 1 or 3 (3: channel counts divisible by 3)."""
    kh, kw = kernel_size
    mask = _mask_cpu(out_channels, in_channels, kh, kw, mask_type, data_channels)
    return mask.to(dtype=dtype, device=device)


def masked_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, mask_type: str, data_channels: int = 1) -> Tensor:
    """``conv2d(x, weight ⊙ mask, bias, padding=(kh // 2, kw // 2))``: ``x [B, C_in, H, W]`` → ``[B, C_out, H, W]``.

    The specification of ``fastflow.ops.masked_conv``: every output position ``(i, j)`` of every channel depends only
    on the inputs the mask lets it see (earlier pixels in raster order; earlier colours at the centre)."""
    out_channels, in_channels, kh, kw = weight.shape
    mask = conv_mask(out_channels, in_channels, (kh, kw), mask_type, data_channels, dtype=weight.dtype,
                     device=weight.device)
    return F.conv2d(x, weight * mask, bias, padding=(kh // 2, kw // 2))
