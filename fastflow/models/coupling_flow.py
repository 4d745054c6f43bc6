"""A small multi-scale flow of affine couplings (RealNVP's recipe, no ActNorm or 1×1 convolution).

Architecture on ``[B, C, H, W]``: dequantise → logit → ``K/2`` checkerboard couplings (alternating parity) →
squeeze → ``K/2`` channel couplings (alternating halves) → standard normal prior. Every coupling runs on the
fused ``fastflow.ops`` coupling op; ``fastflow train flow`` trains it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastflow._checks import check_int, check_real, sample_arguments
from fastflow.models.quantization import bits_per_dim, dequantize, standard_normal_log_prob, to_levels
from fastflow.nn import AffineCoupling, FlowSequential, Squeeze

__all__ = ["CouplingFlow"]


class CouplingFlow(nn.Module):
    """Affine-coupling flow for images with a logit pre-processing and a Gaussian prior.

    Images are integer levels in ``[0, levels)`` or floats in ``[0, 1]`` (``to_levels`` checks the range).

    Args:
        in_channels, image_size: ``C`` and ``H = W`` of the images (``H`` even).
        num_couplings: ``K``, half before the squeeze (checkerboard), half after (channel halves).
        hidden_channels: width of each coupling's conditioner.
        levels: grey levels ``L`` of the data (256 for 8-bit images, 17 for the digits).
        alpha: the logit's margin, ``logit(α + (1 − 2α)·u)``, keeping the logit finite at 0 and 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        *,
        num_couplings: int = 8,
        hidden_channels: int = 64,
        levels: int = 256,
        alpha: float = 0.05,
        scale: str = "sigmoid",
    ):
        super().__init__()
        in_channels, image_size = check_int("in_channels", in_channels), check_int("image_size", image_size)
        if image_size % 2:
            raise ValueError(f"image_size must be even (the flow squeezes 2×2), got {image_size}")
        num_couplings = check_int("num_couplings", num_couplings, minimum=2)
        hidden_channels, levels = check_int("hidden_channels", hidden_channels), check_int("levels", levels, minimum=2)
        alpha = check_real("alpha", alpha, low=0.0, high=0.5)
        self.in_channels, self.image_size, self.levels, self.alpha = in_channels, image_size, levels, alpha
        before = num_couplings // 2
        layers: list[nn.Module] = [
            AffineCoupling(in_channels, mask="checkerboard", scale=scale, flip=bool(i % 2),
                           hidden_channels=hidden_channels)
            for i in range(before)
        ]
        layers.append(Squeeze())
        layers += [
            AffineCoupling(4 * in_channels, mask="channel", scale=scale, flip=bool(i % 2),
                           hidden_channels=hidden_channels)
            for i in range(num_couplings - before)
        ]
        self.flow = FlowSequential(*layers)

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size**2

    def _check(self, x: Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {got}")

    def _logit(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``y = logit(α + (1 − 2α)u)`` and ``log|det ∂y/∂u|`` per example."""
        p = self.alpha + (1 - 2 * self.alpha) * u
        y = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, logdet

    def forward(self, x: Tensor, noise: bool | Tensor = True) -> tuple[Tensor, Tensor]:
        """``z [B, 4C, H/2, W/2]`` and ``log|det ∂z/∂u|`` ``[B]`` for images ``x`` (uint8 levels or [0, 1])."""
        self._check(x)
        dtype = next(self.parameters()).dtype
        u = dequantize(to_levels(x, self.levels).to(dtype), self.levels, noise)
        y, logdet_logit = self._logit(u)
        z, logdet = self.flow(y)
        return z, logdet + logdet_logit

    def log_prob(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """Discrete log-likelihood bound of each image in nats, ``[B]`` (dequantisation term included)."""
        z, logdet = self(x, noise)
        prior = standard_normal_log_prob(z)
        return prior + logdet - self.num_dims * math.log(self.levels)

    def bits_per_dim(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        return bits_per_dim(self.log_prob(x, noise), self.num_dims)

    @torch.no_grad()
    def sample(
        self, n: int | tuple[int, ...], temperature: float = 1.0, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in ``[0, 1]`` (``[*n, C, H, W]`` for a shape ``n``), from ``z ~ N(0, T²)``."""
        shape, count, temperature = sample_arguments(n, temperature)
        parameter = next(self.parameters())
        half = self.image_size // 2
        z = temperature * torch.randn(count, 4 * self.in_channels, half, half, device=device or parameter.device,
                                      dtype=parameter.dtype)
        images = self.inverse(z)
        return images.reshape(*shape, *images.shape[1:])

    def inverse(self, z: Tensor) -> Tensor:
        """Images in ``[0, 1]`` (continuous, before quantisation) from ``z``."""
        y, _ = self.flow.inverse(z)
        return ((torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)).clamp(0, 1)
