"""RealNVP's residual conditioner: conv3×3 → residual blocks → zero-initialised conv3×3."""

from __future__ import annotations

from torch import Tensor, nn

from fastflow._checks import check_int
from fastflow.nn.coupling import _with_condition

__all__ = ["ResNetConditioner"]


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetConditioner(nn.Module):
    """``[B, in, H, W] → [B, out, H, W]``: conv3×3, ``num_blocks`` residual blocks, ReLU, zero-initialised conv3×3.

    Starting the output at zero makes each coupling start as the identity (no normalisation layer needed).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        cond_channels: int = 0,
    ):
        super().__init__()
        in_channels, out_channels = check_int("in_channels", in_channels), check_int("out_channels", out_channels)
        hidden_channels, num_blocks = check_int("hidden_channels", hidden_channels), check_int("num_blocks", num_blocks)
        self.cond_channels = cond_channels = check_int("cond_channels", cond_channels, minimum=0)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + cond_channels, hidden_channels, 3, padding=1),
            *[_ResidualBlock(hidden_channels) for _ in range(num_blocks)],
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(_with_condition(x, cond, self.cond_channels))
