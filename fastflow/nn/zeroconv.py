"""Glow's zero-initialised convolution, the last layer of its priors: ``conv(x) · exp(3·log_gain)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastflow._checks import check_int

__all__ = ["ZeroConv2d"]


class ZeroConv2d(nn.Module):
    """``[B, in, H, W] → [B, out, H, W]``, 3×3 (or ``kernel_size``) convolution starting at exactly zero.

    The per-channel gain ``exp(3·log_gain)`` (Glow's ``logscale_factor``) lets the output scale learn faster
    than the weights do; starting at zero makes every prior start as the standard normal.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        in_channels, out_channels = check_int("in_channels", in_channels), check_int("out_channels", out_channels)
        kernel_size = check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the output keeps the input's size), got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_gain = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3.0 * self.log_gain)
