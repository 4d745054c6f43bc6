"""RealNVP (Dinh, Sohl-Dickstein & Bengio, 2017): multi-scale affine couplings with checkerboard and channel masks.

Each scale: 3 checkerboard couplings (alternating parity) → squeeze → 3 channel couplings (alternating halves)
→ factor out half of the channels to the standard normal; the last scale has 4 checkerboard couplings. Scales
are ``exp`` of a soft-clamped log-scale, conditioners residual networks, and images go through the logit of
``α + (1 − 2α)·u`` after uniform dequantisation; ``log_prob`` is the discrete log-likelihood.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastflow._checks import check_int, check_real, sample_arguments
from fastflow.models.quantization import bits_per_dim, dequantize, standard_normal_log_prob, to_levels
from fastflow.nn import AffineCoupling, InvertibleSequential, Squeeze
from fastflow.nn.resnet import ResNetConditioner

__all__ = ["RealNVP"]


def _coupling(channels: int, mask: str, flip: bool, hidden_channels: int, num_blocks: int) -> AffineCoupling:
    param_channels = channels // 2 if mask == "channel" else channels
    conditioner = ResNetConditioner(param_channels, 2 * param_channels, hidden_channels, num_blocks)
    return AffineCoupling(channels, conditioner=conditioner, mask=mask, scale="exp", flip=flip)


class RealNVP(nn.Module):
    """RealNVP on images ``[B, C, H, W]`` (integer levels in ``[0, num_levels)`` or floats in ``[0, 1]``).

    Args:
        in_channels, image_size: ``C`` and ``H = W`` (divisible by ``2^(levels − 1)``).
        levels: number of scales; hidden_channels / num_blocks: the residual conditioners' width and depth.
        num_levels: grey levels of the data (256); alpha: the logit's margin.
        memory_efficient: rebuild activations from outputs in the backward (memory independent of depth).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        *,
        levels: int = 3,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        memory_efficient: bool = False,
        num_levels: int = 256,
        alpha: float = 0.05,
    ):
        super().__init__()
        in_channels, image_size = check_int("in_channels", in_channels), check_int("image_size", image_size)
        levels, hidden_channels = check_int("levels", levels), check_int("hidden_channels", hidden_channels)
        num_blocks, num_levels = check_int("num_blocks", num_blocks), check_int("num_levels", num_levels, minimum=2)
        alpha = check_real("alpha", alpha, low=0.0, high=0.5)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size must be divisible by 2^(levels - 1) = {2 ** (levels - 1)}, got {image_size}")
        self.in_channels, self.image_size, self.num_levels, self.alpha = in_channels, image_size, num_levels, alpha
        self.scales = nn.ModuleList()
        channels = in_channels
        for scale in range(levels):
            if scale == levels - 1:
                layers = [
                    _coupling(channels, "checkerboard", bool(i % 2), hidden_channels, num_blocks) for i in range(4)
                ]
            else:
                layers = [
                    _coupling(channels, "checkerboard", bool(i % 2), hidden_channels, num_blocks) for i in range(3)
                ]
                layers.append(Squeeze())
                channels *= 4
                layers += [_coupling(channels, "channel", bool(i % 2), hidden_channels, num_blocks) for i in range(3)]
                channels //= 2
            self.scales.append(InvertibleSequential(*layers, memory_efficient=memory_efficient))

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size**2

    def preprocess(self, x: Tensor, noise: bool | Tensor = True) -> tuple[Tensor, Tensor]:
        """``(logit(α + (1 − 2α)·u), log|det|)`` of the dequantised images ``u``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {got}")
        dtype = next(self.parameters()).dtype
        u = dequantize(to_levels(x, self.num_levels).to(dtype), self.num_levels, noise)
        p = self.alpha + (1 - 2 * self.alpha) * u
        y = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, logdet.float() if dtype != torch.float64 else logdet

    def encode(self, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """The flow on the logit-space ``y``: the latent of every scale (finest first) and ``log|det J|`` ``[B]``."""
        zs: list[Tensor] = []
        logdet = 0.0
        h = y
        for index, scale in enumerate(self.scales):
            h, scale_logdet = scale(h)
            logdet = logdet + scale_logdet
            if index < len(self.scales) - 1:
                half = h.shape[1] // 2
                zs.append(h[:, half:])
                h = h[:, :half]
        zs.append(h)
        return zs, logdet

    def forward(self, x: Tensor, noise: bool | Tensor = True) -> tuple[list[Tensor], Tensor]:
        """``(zs, log|det ∂z/∂u|)``: the latent factored out at every scale (finest first) and the top one."""
        y, logdet = self.preprocess(x, noise)
        zs, flow_logdet = self.encode(y)
        return zs, logdet + flow_logdet

    def decode(self, zs: list[Tensor]) -> Tensor:
        """The exact inverse of :meth:`encode`: the logit-space ``y`` from the latents of every scale."""
        if len(zs) != len(self.scales):
            raise ValueError(f"zs must hold one tensor per scale ({len(self.scales)}), got {len(zs)}")
        h = zs[-1]
        for index in reversed(range(len(self.scales))):
            if index < len(self.scales) - 1:
                h = torch.cat([h, zs[index]], 1)
            h, _ = self.scales[index].inverse(h)
        return h

    def inverse(self, zs: list[Tensor]) -> Tensor:
        """Images in ``[0, 1]`` (continuous) from the latents of every scale."""
        # An overflowed pixel (a latent far from the data) is saturated, as Glow.postprocess does.
        h = torch.nan_to_num(self.decode(zs), nan=0.0)
        return ((torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha)).clamp(0, 1)

    def log_prob(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        zs, logdet = self(x, noise)
        prior = sum(standard_normal_log_prob(z) for z in zs)
        return prior + logdet - self.num_dims * math.log(self.num_levels)

    def bits_per_dim(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        return bits_per_dim(self.log_prob(x, noise), self.num_dims)

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        shapes, channels, size = [], self.in_channels, self.image_size
        for _ in range(len(self.scales) - 1):
            channels, size = channels * 2, size // 2
            shapes.append((channels, size, size))
        shapes.append((channels, size, size))
        return shapes

    @torch.no_grad()
    def sample(self, n: int | tuple[int, ...], temperature: float = 1.0) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in ``[0, 1]`` (``[*n, C, H, W]`` for a shape ``n``), ``z ~ N(0, T²)``."""
        shape, count, temperature = sample_arguments(n, temperature)
        parameter = next(self.parameters())
        zs = [
            temperature * torch.randn(count, *s, device=parameter.device, dtype=parameter.dtype)
            for s in self.latent_shapes()
        ]
        images = self.inverse(zs)
        return images.reshape(*shape, *images.shape[1:])
