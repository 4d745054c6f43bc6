"""Discrete images as continuous flows see them: uniform dequantisation and the discrete likelihood.

For an image ``k ∈ {0, …, L−1}^D`` and ``u = (k + ε)/L`` with ``ε ~ U[0, 1)^D``, Jensen's inequality gives
``log P(k) ≥ E_ε[log p(u)] − D·log L``: the bound that papers report in bits/dim, ``−log P(k) / (D·log 2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bits_per_dim", "dequantization_noise", "dequantize", "standard_normal_log_prob", "to_levels"]

_LOG_2PI = math.log(2 * math.pi)


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Integer levels ``k`` (as float) from uint8 ``k`` or floats ``k/(L−1)`` in ``[0, 1]``; ``[B, C, H, W]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.numel() and int(x.max()) >= levels:
            raise ValueError(f"x: uint8 values must be below levels={levels}, got max {int(x.max())}")
        return x.float()
    if not x.is_floating_point():
        raise TypeError(f"x must be uint8 levels or floats in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x: float images must lie in [0, 1], got [{x.min().item():.3g}, {x.max().item():.3g}]")
    return torch.round(x * (levels - 1))


def dequantization_noise(k: Tensor, noise: bool | Tensor = True) -> Tensor:
    """``ε`` for :func:`dequantize`: ``U[0, 1)`` draws (``True``), ``1/2`` (``False``), or ``noise`` itself (a
    tensor shaped like ``k`` with values in ``[0, 1)``: a trainer that draws the noise of a whole distributed batch
    from one generator gives every example the same ``ε`` whatever the number of processes)."""
    if isinstance(noise, Tensor):
        if noise.shape != k.shape:
            raise ValueError(f"noise must have the shape of x {tuple(k.shape)}, got {tuple(noise.shape)}")
        return noise.to(device=k.device, dtype=k.dtype)
    return torch.rand_like(k) if noise else torch.full_like(k, 0.5)


def dequantize(k: Tensor, levels: int, noise: bool | Tensor = True) -> Tensor:
    """``u = (k + ε)/L`` in ``(0, 1)``, ``ε`` from :func:`dequantization_noise`."""
    return (k + dequantization_noise(k, noise)) / levels


def bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """``−log P / (D·log 2)`` per example, from the log-likelihood in nats."""
    return -log_prob / (num_dims * math.log(2.0))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per example, ``[B]``, from ``z [B, ...]``; in float32 (float64 for float64 ``z``)."""
    z = z if z.dtype == torch.float64 else z.float()
    return -0.5 * (z * z + _LOG_2PI).flatten(1).sum(1)
