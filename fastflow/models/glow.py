"""Glow (Kingma & Dhariwal, 2018): a multi-scale flow of ActNorm → LU 1×1 convolution → coupling steps.

``L`` levels; each squeezes 2×2, runs ``K`` flow steps, and (but the last) factors out half of the channels
with a learned conditional prior (:class:`fastflow.nn.Split`). The top prior is ``N(μ, σ²)`` with ``(μ, log σ)``
learned per channel (``learn_top``) and, for a class-conditional model, shifted by a learned embedding of the
label (ycond), which also gets a classifier on the top ``z``. Images are reduced to ``n_bits`` and dequantised
uniformly; ``log_prob`` is the discrete log-likelihood (the quantisation term included), so bits/dim compare
with the paper's.

Every factored-out part and the top ``z`` are standardised (``ε = (z − μ)/σ``), so ``forward(x)`` returns the
list of ``ε`` of every level, each scored under ``N(0, I)``, and ``inverse(zs)`` is the exact inverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_int, sample_arguments
from fastflow.models.quantization import bits_per_dim, dequantization_noise, standard_normal_log_prob, to_levels
from fastflow.nn import FlowStep, InvertibleSequential, Split, Squeeze
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["Glow"]


class Glow(nn.Module):
    """Glow on images ``[B, C, H, W]`` (uint8 — or any integer dtype — in ``[0, 2^8)``, or floats in ``[0, 1]``).

    Args:
        in_channels, image_size: ``C`` and ``H = W`` (divisible by ``2^levels``).
        levels: ``L``; depth: ``K`` steps per level; hidden_channels: coupling width.
        coupling: ``"affine"`` or ``"additive"``; lu: LU 1×1 convolutions (fused with ActNorm).
        learn_top: learned top prior; num_classes: class-conditional prior and classifier (ycond).
        n_bits: bits per channel the 8-bit images are reduced to (``2^n_bits`` levels).
        num_levels: the data's grey levels when they are not ``2^n_bits`` (e.g. 17 for the digits): integer
            inputs are then levels in ``[0, num_levels)`` and floats ``k/(num_levels − 1)``. Values out of range
            (or NaN) are a ``ValueError`` (``fastflow.models.quantization.to_levels``).
        memory_efficient: rebuild activations from outputs in the backward (memory independent of ``K``).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        *,
        levels: int = 3,
        depth: int = 32,
        hidden_channels: int = 512,
        coupling: str = "affine",
        lu: bool = True,
        learn_top: bool = True,
        num_classes: int | None = None,
        n_bits: int = 8,
        memory_efficient: bool = False,
        num_levels: int | None = None,
    ):
        super().__init__()
        in_channels, image_size = check_int("in_channels", in_channels), check_int("image_size", image_size)
        levels, depth = check_int("levels", levels), check_int("depth", depth)
        hidden_channels = check_int("hidden_channels", hidden_channels)
        if image_size % (2**levels):
            raise ValueError(f"image_size must be divisible by 2^levels = {2**levels}, got {image_size}")
        n_bits = check_int("n_bits", n_bits)
        if not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=2)
        if num_levels is not None:
            num_levels = check_int("num_levels", num_levels, minimum=2)
        self.in_channels, self.image_size, self.n_bits = in_channels, image_size, n_bits
        self.num_levels = num_levels if num_levels is not None else 2**n_bits
        self.num_classes = num_classes
        self.learn_top = learn_top
        self.memory_efficient = memory_efficient

        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        channels = in_channels
        for level in range(levels):
            channels *= 4
            steps = [
                FlowStep(channels, hidden_channels=hidden_channels, coupling=coupling, lu=lu) for _ in range(depth)
            ]
            self.levels.append(InvertibleSequential(Squeeze(), *steps, memory_efficient=memory_efficient))
            if level < levels - 1:
                self.splits.append(Split(channels))
                channels //= 2
        self.top_channels = channels
        self.top_size = image_size // 2**levels
        if learn_top:
            # Glow applies a zero-initialised convolution to zeros, i.e. a learned (μ, log σ) per channel: kept
            # here as that, without the convolution's weight (which never receives a gradient).
            self.top_prior = nn.Parameter(torch.zeros(2 * channels))
        if num_classes is not None:
            self.class_embedding = nn.Linear(num_classes, 2 * channels)
            self.classifier = nn.Linear(channels, num_classes)
            for layer in (self.class_embedding, self.classifier):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------------------------
    # Data.

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size**2

    def _levels(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {got}")
        # 8-bit data (uint8 or any integer dtype in [0, 256), floats k/255) reduced to n_bits, or the data's own
        # num_levels; to_levels checks the range (NaN included) before the reduction.
        eight_bit = self.num_levels == 2**self.n_bits
        k = to_levels(x, 256 if eight_bit else self.num_levels)
        if eight_bit and self.n_bits < 8:
            k = torch.floor(k / 2 ** (8 - self.n_bits))
        return k

    def preprocess(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """``u = (k + ε)/2^n_bits − 1/2``, ``ε ~ U[0, 1)``: Glow's dequantised input in ``[−1/2, 1/2)``."""
        k = self._levels(x)
        eps = dequantization_noise(k, noise)
        dtype = next(self.parameters()).dtype
        return ((k + eps) / self.num_levels - 0.5).to(dtype)

    def postprocess(self, u: Tensor) -> Tensor:
        """Images in ``[0, 1]`` from the flow's input space.

        The inverse divides by ``sigmoid(h + 2)`` at every step, so a latent far from the data (high temperature,
        an under-trained model) can overflow float32 on its way back; such pixels are saturated (``±inf`` to the
        nearest end of the range, NaN to mid-grey) instead of breaking the image.
        """
        u = torch.nan_to_num(u, nan=0.0, posinf=0.5, neginf=-0.5)
        k = torch.floor((u + 0.5) * self.num_levels).clamp(0, self.num_levels - 1)
        return k / (self.num_levels - 1)

    # ----------------------------------------------------------------------------------------------
    # The flow.

    def _top_params(self, batch: int, y: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of the top prior, ``[B, C_top, h, w]`` each."""
        h = like.new_zeros(batch, 2 * self.top_channels, self.top_size, self.top_size)
        if self.learn_top:
            h = h + self.top_prior.to(like.dtype)[None, :, None, None]
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this Glow is class-conditional (num_classes set): pass the labels y")
            onehot = F.one_hot(y, self.num_classes).to(like.dtype)
            h = h + self.class_embedding(onehot)[:, :, None, None]
        elif y is not None:
            raise ValueError("y was given but this Glow has num_classes=None")
        return h[:, 0::2], h[:, 1::2]

    def _check_labels(self, y: Tensor | None, batch: int) -> None:
        if y is None:
            return
        if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (batch,):
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be integer labels of shape ({batch},), got {got}")

    def encode(self, u: Tensor, y: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Flow's forward on pre-processed ``u``: the standardised ``ε`` of every level and ``log|det J|``."""
        self._check_labels(y, u.shape[0])
        zs: list[Tensor] = []
        logdet = u.new_zeros(u.shape[0], dtype=accumulation_dtype(u.dtype))
        h = u
        for index, level in enumerate(self.levels):
            h, level_logdet = level(h)
            logdet = logdet + level_logdet
            if index < len(self.splits):
                h, split_logdet = self.splits[index](h)
                logdet = logdet + split_logdet
                half = h.shape[1] // 2
                zs.append(h[:, half:])
                h = h[:, :half]
        mean, log_sigma = self._top_params(u.shape[0], y, h)
        eps, top_logdet = self._standardize_top(h, mean, log_sigma)
        zs.append(eps)
        return zs, logdet + top_logdet

    def _standardize_top(self, z: Tensor, mean: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``ε = (z − μ)/σ`` and its ``log|det| = −Σ log σ``."""
        eps = (z - mean) * torch.exp(-log_sigma)
        return eps, -log_sigma.to(accumulation_dtype(z.dtype)).flatten(1).sum(1)

    def forward(self, x: Tensor, y: Tensor | None = None, noise: bool | Tensor = True) -> tuple[list[Tensor], Tensor]:
        """``(zs, logdet)``: the standardised latent of every level (finest first) and ``log|det ∂z/∂u|`` ``[B]``."""
        return self.encode(self.preprocess(x, noise), y)

    def decode(self, zs: Sequence[Tensor], y: Tensor | None = None) -> Tensor:
        """The exact inverse of :meth:`encode`: the pre-processed ``u`` from the ``ε`` of every level."""
        if len(zs) != len(self.levels):
            raise ValueError(f"zs must hold one tensor per level ({len(self.levels)}), got {len(zs)}")
        eps_top = zs[-1]
        self._check_labels(y, eps_top.shape[0])
        mean, log_sigma = self._top_params(eps_top.shape[0], y, eps_top)
        h = eps_top * torch.exp(log_sigma) + mean
        for index in reversed(range(len(self.levels))):
            if index < len(self.splits):
                h, _ = self.splits[index].inverse(torch.cat([h, zs[index]], 1))
            h, _ = self.levels[index].inverse(h)
        return h

    def inverse(self, zs: Sequence[Tensor], y: Tensor | None = None) -> Tensor:
        """The exact inverse of :meth:`forward`: images' pre-processed ``u`` (:meth:`postprocess` makes images)."""
        return self.decode(zs, y)

    # ----------------------------------------------------------------------------------------------
    # Likelihood and sampling.

    def log_prob(self, x: Tensor, y: Tensor | None = None, noise: bool | Tensor = True) -> Tensor:
        """Discrete log-likelihood of each image in nats, ``[B]`` (float32), the quantisation term included."""
        zs, logdet = self(x, y, noise)
        prior = sum(standard_normal_log_prob(z) for z in zs)
        return prior + logdet - self.num_dims * math.log(self.num_levels)

    def bits_per_dim(self, x: Tensor, y: Tensor | None = None, noise: bool | Tensor = True) -> Tensor:
        return bits_per_dim(self.log_prob(x, y, noise), self.num_dims)

    def class_logits(self, x: Tensor, noise: bool | Tensor = True) -> Tensor:
        """ycond's classifier on the (unstandardised) top latent: ``[B, num_classes]`` logits."""
        if self.num_classes is None:
            raise ValueError("class_logits needs a class-conditional Glow (num_classes set)")
        h = self.preprocess(x, noise)
        for index, level in enumerate(self.levels):
            h, _ = level(h)
            if index < len(self.splits):
                h, _ = self.splits[index](h)
                h = h[:, : h.shape[1] // 2]
        return self.classifier(h.mean(dim=(2, 3)))

    @torch.no_grad()
    def sample(
        self,
        n: int | Sequence[int],
        temperature: float | Sequence[float] = 1.0,
        y: Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in ``[0, 1]``; ``temperature`` one value or one per level (finest first).

        ``n`` may be a shape (``(n,)``, ``torch.Size([n, m])``): the images come as ``[*shape, C, H, W]``.
        """
        shape, count, temperatures = sample_arguments(n, temperature, levels=len(self.levels))
        parameter = next(self.parameters())
        device = device or parameter.device
        shapes = self.latent_shapes()
        zs = [
            t * torch.randn(count, *shape_z, device=device, dtype=parameter.dtype)
            for t, shape_z in zip(temperatures, shapes, strict=True)
        ]
        if isinstance(y, Tensor):  # one label per sample, shaped like n or flat
            y = y.to(device).reshape(-1) if tuple(y.shape) == shape else y.to(device)
        images = self.postprocess(self.decode(zs, y)).clamp(0, 1)
        return images.reshape(*shape, *images.shape[1:])

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """The shape of ``ε`` at every level, finest first."""
        shapes = []
        channels, size = self.in_channels, self.image_size
        for index in range(len(self.levels)):
            channels, size = channels * 4, size // 2
            if index < len(self.splits):
                shapes.append((channels // 2, size, size))
                channels //= 2
        shapes.append((channels, size, size))
        return shapes
