"""Benchmark cases of a whole Glow training step (Kingma & Dhariwal, 2018) on ``3×32×32`` images.

forward: the negative log-likelihood in bits/dim; full: forward and the gradients of every parameter; bwd: the
backward alone. The model with fastflow's fused ops (each backend) against the same model under
``fastflow.set_backend("reference")`` (plain PyTorch: ActNorm, ``conv2d``, ``chunk``/``cat`` couplings) and
``torch.compile`` of that; ``memory-saving`` is fastflow's model with ``memory_efficient=True`` (the same weights,
the automatic backend choice, eager: ``torch.compile`` does not trace its backward), whose peak memory the reports
give beside the others'. Parameters are the case's inputs (``torch.func.functional_call``), so that the
gradients of every one of them are computed, as in training. On GPUs Glow's CIFAR-10 configuration also runs in
bf16 under ``torch.autocast`` (float32 parameters and flow state, as ``fastflow train --precision bf16``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import fastflow
from bench.harness import PRIORITY_MODEL, PRIORITY_MODEL_MORE, Case, register
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


# The models by (config, device of the inputs). A plain dict, not ``functools.cache``: the step below is compiled,
# and dynamo ignores a cache wrapper and traces the wrapped function, i.e. the construction of the whole model
# and its ActNorm initialisation, into every compiled graph (slower compiles, at best). Looking a key up in a dict
# is traced as a constant. Keyed by a tensor's device (``cuda:0``, never ``cuda``), so that the inputs and the
# step find the same model.
_MODELS: dict[tuple[tuple, torch.device], _NegativeLogLikelihood] = {}


def _glow(config: tuple, device: torch.device, memory_efficient: bool = False) -> _NegativeLogLikelihood:
    """The model of ``config`` on ``device`` (a tensor's device), built and ActNorm-initialised on first use; the
    memory-saving one shares the standard one's weights (a copy of its state)."""
    key = (config, device, memory_efficient)
    if key not in _MODELS:
        batch, channels, size, levels, depth, hidden = config
        torch.manual_seed(0)
        model = Glow(channels, size, levels=levels, depth=depth, hidden_channels=hidden,
                     memory_efficient=memory_efficient).to(device)
        if memory_efficient:
            model.load_state_dict(_glow(config, device).model.state_dict())
        else:
            with torch.no_grad():  # ActNorm's data-dependent initialisation
                model(torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=device))
        _MODELS[key] = _NegativeLogLikelihood(model)
    return _MODELS[key]


def _glow_inputs(config, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, channels, size = config[:3]
    u = torch.rand(batch, channels, size, size, device=device, generator=generator) - 0.5
    loss = _glow(config, u.device)
    inputs = {name: p.detach().clone() for name, p in loss.named_parameters()}
    inputs["u"] = u
    return inputs


def _glow_step(config, memory_efficient=False, autocast=None, **inputs) -> torch.Tensor:
    u = inputs.pop("u")
    # Built by _glow_inputs (the memory-saving one at its first call, eager): only the lookup is traced.
    loss = _MODELS[(config, u.device, False)] if not memory_efficient else _glow(config, u.device, True)
    if autocast is None:
        return torch.func.functional_call(loss, inputs, (u,))
    # Mixed precision as `fastflow train --precision bf16` runs it: the parameters and the flow's state stay float32.
    with torch.autocast(u.device.type, dtype=autocast):
        return torch.func.functional_call(loss, inputs, (u,)).float()


def make_glow_case(config: tuple, expected_s: dict[str, float], *, quick: bool = False,
                   autocast: torch.dtype | None = None) -> Case:
    """A Glow step of ``config`` = ``(batch, channels, size, levels, depth, hidden)``; ``expected_s``: the time
    budget's guess of each mode's seconds before a Glow group has run (``Case.expected_s``); ``autocast``: a
    low-precision dtype to run the step under ``torch.autocast`` (float32 parameters), e.g. ``torch.bfloat16``."""
    batch, channels, size, levels, depth, hidden = config
    step = functools.partial(_glow_step, config, autocast=autocast)
    precision = {None: "f32", torch.bfloat16: "bf16-autocast", torch.float16: "f16-autocast"}[autocast]
    return Case(
        op="glow",
        name=f"B{batch}x{channels}x{size}x{size}-L{levels}-K{depth}-h{hidden}-{precision}",
        make_inputs=functools.partial(_glow_inputs, config),
        fns={"reference": step, "fastflow": step,
             "memory-saving": functools.partial(_glow_step, config, True, autocast)},
        bytes={},
        quick=quick,
        params={"batch": batch, "image": [channels, size, size], "levels": levels, "depth": depth, "hidden": hidden,
                "precision": precision},
        contexts={"reference": _reference_backend, "compile": _reference_backend},
        uses=("actnorm_invconv", "coupling"),
        # After every op case: compiling a whole model (compile and fastflow+compile) takes minutes.
        priority=PRIORITY_MODEL if quick else PRIORITY_MODEL_MORE,
        expected_s=expected_s,
    )


# Rough guesses of a (case, mode) group's seconds, all providers: the fwd group compiles `compile` and
# `fastflow+compile` (forward and backward graphs), bwd and full reuse them. CPU: measured on a 2-core VM (K = 8:
# 30 s and 18 s of compilation, the whole fwd group about 60 s, the others about 12 s each); GPU: scaled by the
# number of flow steps (K = 32, 96 steps: four times K = 8), the GPU machine's host being faster, with room for a
# backward compiled at its first call. The estimate is the larger of these and what Glow groups measured.
CPU_EXPECTED_S = {"fwd": 60.0, "bwd": 15.0, "full": 15.0}
GPU_CIFAR_EXPECTED_S = {"fwd": 180.0, "bwd": 60.0, "full": 20.0}
GPU_SMALL_EXPECTED_S = {"fwd": 60.0, "bwd": 20.0, "full": 10.0}


@register("glow")
def glow_cases(device: torch.device) -> list[Case]:
    if device.type == "cuda":
        # Glow's CIFAR-10 configuration (Kingma & Dhariwal: L = 3, K = 32, 512 hidden channels; batch 64), and a
        # smaller one.
        # bf16 under autocast next (issue 13's GPU targets are for both), then the small one.
        cifar = (64, 3, 32, 3, 32, 512)
        return [make_glow_case(cifar, GPU_CIFAR_EXPECTED_S, quick=True),
                make_glow_case(cifar, GPU_CIFAR_EXPECTED_S, quick=True, autocast=torch.bfloat16),
                make_glow_case((64, 3, 32, 3, 8, 128), GPU_SMALL_EXPECTED_S)]
    # Batch 16, hidden 128, K = 8 (quick), 16 (issue 13's acceptance configuration) and 32.
    return [make_glow_case((16, 3, 32, 3, 8, 128), CPU_EXPECTED_S, quick=True),
            make_glow_case((16, 3, 32, 3, 16, 128), {mode: 2 * s for mode, s in CPU_EXPECTED_S.items()}),
            make_glow_case((16, 3, 32, 3, 32, 128), {mode: 4 * s for mode, s in CPU_EXPECTED_S.items()})]
