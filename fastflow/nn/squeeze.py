"""Squeeze: Glow/RealNVP's 2×2 space-to-depth, ``[B, C, H, W] → [B, 4C, H/2, W/2]``; volume preserving."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastflow._checks import check_flow_input
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["Squeeze"]


class Squeeze(nn.Module):
    """``forward``: ``[B, C, H, W] → [B, 4C, H/2, W/2]`` (channel ``4c + 2i + j`` holds pixel ``(2h+i, 2w+j)``).

    ``inverse`` undoes it; both return ``logdet = 0`` of shape ``[B]`` (float32, float64 for float64 input).
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flow_input("x", x, None)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"x: Squeeze needs even H and W, got {h}×{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, _zero_logdet(x)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flow_input("y", y, None)
        if y.shape[1] % 4:
            raise ValueError(f"y must be [B, 4C, H, W] (channels divisible by 4), got shape {tuple(y.shape)}")
        b, c4, h, w = y.shape
        x = y.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)
        return x, _zero_logdet(y)


def _zero_logdet(x: Tensor) -> Tensor:
    return torch.zeros(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)

