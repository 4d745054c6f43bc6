"""The precision rule of every op, layer and model, in one place: pixel math runs in the input dtype (the
kernels compute low precision in float32), while log-determinants and log-likelihoods accumulate in float32,
or in float64 for float64 inputs."""

from __future__ import annotations

import torch

__all__ = ["accumulation_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of log-determinants and likelihoods for inputs of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
