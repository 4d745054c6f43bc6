"""Benchmark cases of a whole Glow training step (Kingma & Dhariwal, 2018) on ``3×32×32`` images.

forward: the negative log-likelihood in bits/dim; full: forward and the gradients of every parameter; bwd: the
backward alone. The model with fastflow's fused ops (each backend) against the same model under
``fastflow.set_backend("reference")`` (plain PyTorch: ActNorm, ``conv2d``, ``chunk``/``cat`` couplings) and
``torch.compile`` of that. Parameters are the case's inputs (``torch.func.functional_call``), so that the
gradients of every one of them are computed, as in training.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import fastflow
from bench.harness import Case, register
from fastflow.models import Glow
from fastflow.models.quantization import standard_normal_log_prob


def _reference_backend():
    return fastflow.set_backend("reference")


class _NegativeLogLikelihood(nn.Module):
    """Bits/dim of pre-processed images ``u`` under ``model``, averaged over the batch (no dequantisation noise
    inside: ``u`` is an input, so that every provider sees the same numbers)."""

    def __init__(self, model: Glow):
        super().__init__()
        self.model = model

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        zs, logdet = self.model.encode(u)
        prior = sum(standard_normal_log_prob(z) for z in zs)
        log_prob = prior + logdet - self.model.num_dims * math.log(self.model.num_levels)
        return (-log_prob / (self.model.num_dims * math.log(2.0))).mean()


@functools.cache
def _glow(config: tuple, device: str) -> _NegativeLogLikelihood:
    batch, channels, size, levels, depth, hidden = config
    torch.manual_seed(0)
    model = Glow(channels, size, levels=levels, depth=depth, hidden_channels=hidden).to(device)
    with torch.no_grad():
        model(torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=device))  # ActNorm
    return _NegativeLogLikelihood(model)


def _glow_inputs(config, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, channels, size = config[:3]
    loss = _glow(config, str(device))
    inputs = {name: p.detach().clone() for name, p in loss.named_parameters()}
    inputs["u"] = torch.rand(batch, channels, size, size, device=device, generator=generator) - 0.5
    return inputs


def _glow_step(config, **inputs) -> torch.Tensor:
    loss = _glow(config, str(inputs["u"].device))
    u = inputs.pop("u")
    return torch.func.functional_call(loss, inputs, (u,))


def make_glow_case(config: tuple, *, quick: bool = False) -> Case:
    batch, channels, size, levels, depth, hidden = config
    step = functools.partial(_glow_step, config)
    return Case(
        op="glow",
        name=f"B{batch}x{channels}x{size}x{size}-L{levels}-K{depth}-h{hidden}-f32",
        make_inputs=functools.partial(_glow_inputs, config),
        fns={"reference": step, "fastflow": step},
        bytes={},
        quick=quick,
        params={"batch": batch, "image": [channels, size, size], "levels": levels, "depth": depth, "hidden": hidden},
        contexts={"reference": _reference_backend, "compile": _reference_backend},
        uses=("actnorm_invconv", "coupling"),
    )


@register("glow")
def glow_cases(device: torch.device) -> list[Case]:
    if device.type == "cuda":
        # Glow's CIFAR-10 configuration, and a smaller one.
        return [make_glow_case((64, 3, 32, 3, 32, 512), quick=True), make_glow_case((64, 3, 32, 3, 8, 128))]
    return [make_glow_case((16, 3, 32, 3, 8, 128), quick=True)]
