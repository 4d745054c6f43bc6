"""Discrete images as continuous flows see them: uniform dequantisation and the discrete likelihood.

For an image ``k ∈ {0, …, L−1}^D`` and ``u = (k + ε)/L`` with ``ε ~ U[0, 1)^D``, Jensen's inequality gives
``log P(k) ≥ E_ε[log p(u)] − D·log L``: the bound that papers report in bits/dim, ``−log P(k) / (D·log 2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastflow._checks import values_readable

__all__ = ["bits_per_dim", "dequantization_noise", "dequantize", "standard_normal_log_prob", "to_levels"]

_LOG_2PI = math.log(2 * math.pi)


def _host_check(x: Tensor) -> bool:
    """Whether :func:`to_levels` reads the image's range on the host (and raises) or poisons bad pixels instead.

    A CPU tensor is read: a memory read, no device synchronisation. A GPU tensor is read (one synchronisation per
    call) outside autograd — evaluation, sampling checks, interactive ``log_prob`` under ``no_grad`` — but not in
    a differentiable call, which is the training step that must make no host synchronisation (tests/test_glow.py):
    there an out-of-range pixel becomes NaN (no sync), so that the loss is NaN and the trainer's non-finite guard
    stops with an error, instead of a silently wrong likelihood. Nothing is read under ``torch.compile``.
    """
    if not values_readable(x):
        return False
    return x.device.type == "cpu" or not torch.is_grad_enabled()


def to_levels(x: Tensor, levels: int, *, name: str = "x") -> Tensor:
    """Integer levels ``k`` (as float) from integer ``k`` in ``[0, levels)`` (any integer dtype) or floats
    ``k/(L−1)`` in ``[0, 1]``, any shape; float32 (float64 for float64 ``x``).

    The range is checked, NaN included: a ``ValueError`` naming ``x`` (one host read, see :func:`_host_check` for
    when; otherwise the bad pixels become NaN). A tensor of another kind (complex) is a ``TypeError``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be integer levels or floats in [0, 1], got {x.dtype}")
    floating = x.is_floating_point()
    if floating:
        low, high = 0.0, 1.0
        k = torch.round((x if x.dtype == torch.float64 else x.float()) * (levels - 1))
    else:
        low, high = 0, levels - 1
        k = x.float()
    if x.numel() == 0:
        return k
    if _host_check(x):
        # One read of both ends (a NaN makes them NaN, which fails both comparisons). Note for the CPU no-sync
        # test of tests/test_glow.py: tolist() records no aten::item, so that test does not see this read; it is
        # a CPU memory read, and the GPU test (sync debug mode) covers the training step's GPU path, which reads
        # nothing.
        lo, hi = torch.stack(torch.aminmax(x.to(torch.uint8) if x.dtype == torch.bool else x)).tolist()
        if not (lo >= low and hi <= high):
            _raise_range(name, x, levels, lo, hi)
        return k
    inside = (x >= low) & (x <= high)  # False at NaN
    return torch.where(inside, k, torch.nan)


def _raise_range(name: str, x: Tensor, levels: int, lo: float, hi: float) -> None:
    if x.is_floating_point():
        nans = int(torch.isnan(x).sum())
        if nans:
            raise ValueError(f"{name}: float images must lie in [0, 1], got {nans} NaN value(s)")
        raise ValueError(
            f"{name}: float images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; scale them (e.g. uint8 images / 255) "
            "or pass the integer levels"
        )
    dtype = str(x.dtype).removeprefix("torch.")
    raise ValueError(
        f"{name}: {dtype} values must be below levels={levels} and >= 0 (integer images hold the levels "
        f"0..{levels - 1}), got [{lo}, {hi}]"
    )


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
