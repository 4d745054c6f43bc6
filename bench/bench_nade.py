"""Benchmark cases of the NADE op (``fastflow.ops.nade`` / ``nade_sample``) at MNIST's size, ``D = 784``, ``H = 500``,
batch 128, float32 (the acceptance shapes, ``--quick``), and bfloat16 on GPU; data and samples with binarised
MNIST's 13 % ones, and (``dense-…``) with half ones.

- ``loglik-…``: the logits of every conditional and the log-likelihood, forward and backward (gradients of
  ``x``, ``W``, ``c``, ``V``, ``b``). Providers: ``reference`` is :func:`fastflow.reference.nade.nade_materialized`,
  the vectorised form a user writes to avoid a Python loop (every ``a_i`` at once as a cumulative sum, ``B·D·H``
  numbers in memory, and as many saved for the backward: the fastest plain PyTorch here), ``compile`` its
  ``torch.compile``; ``loop`` is the specification :func:`fastflow.reference.nade.nade`, one dimension at a time
  in eager PyTorch (``O(B·H)`` memory, ``D`` small steps); ``cpu`` / ``triton`` and ``fastflow+compile`` the fused
  scan.
- ``sample-…``: ancestral sampling from given uniforms, inherently one dimension after another: ``reference`` is
  the eager loop (:func:`fastflow.reference.nade.nade_sample_loop` under ``no_grad``), ``compile`` its
  ``torch.compile`` (the loop unrolled into one graph of ``D`` steps: a long compilation), the fastflow providers
  the fused sampler, whose loop runs inside the kernel. Sampling has no backward (``work_free``: the ``bwd`` rows
  time an empty ``autograd.grad``); ``full`` equals ``fwd``.

Byte counts (:func:`nade_bytes`) are each input read once and each output written once; FLOP counts
(:func:`nade_flops`) are the formula's multiply-adds (sigmoids not counted): a nominal measure of the work, which
the fused scan does with no ``B·D·H`` tensor in memory at all.
"""

from __future__ import annotations

import functools
import math

import torch

from bench.harness import PRIORITY_ACCEPTANCE_16BIT, Case, register
from fastflow import ops
from fastflow.reference import nade as reference

_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}
ACCEPTANCE = (128, 784, 500)  # B, D, H: binarised MNIST, Larochelle & Murray's hidden size


def nade_bytes(batch: int, dims: int, hidden: int, dtype: torch.dtype, sample: bool = False) -> dict:
    """Minimum bytes per call, ``e`` bytes per element of ``dtype``, float32 (``a = 4``) logits and likelihoods.

    - log-likelihood, fwd: reads ``x`` (``B·D``), ``W`` and ``V`` (``D·H`` each), ``c``, ``b``; writes the logits
      (``B·D``, in ``x``'s dtype) and ``log_prob`` (``B``, float32): ``e·(2·B·D + 2·D·H + H + D) + a·B``.
    - bwd: reads the logits' gradient (``B·D``, ``x``'s dtype) and ``log_prob``'s (``B``, float32), ``x``, the
      parameters and the saved float32 logits (``B·D``), writes the five gradients (``B·D`` and the parameters'
      sizes): ``e·(3·B·D + 4·D·H + 2·(H + D)) + a·(B·D + B)``.
    - sample, fwd: reads ``u`` (``B·D``, float32), ``W``, ``V``, ``c``, ``b``; writes ``x`` (``B·D``):
      ``e·(B·D + 2·D·H + H + D) + 4·B·D``; no backward.
    - full = fwd + bwd.
    """
    e = torch.empty((), dtype=dtype).element_size()
    a = 8 if dtype == torch.float64 else 4
    params = 2 * dims * hidden + hidden + dims
    if sample:
        fwd = e * (batch * dims + params) + 4 * batch * dims
        return {"fwd": fwd, "bwd": None, "full": fwd}
    fwd = e * (2 * batch * dims + params) + a * batch
    bwd = e * (3 * batch * dims + 2 * params) + a * (batch * dims + batch)  # 2·params = 4·D·H + 2·(H + D)
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}


def nade_flops(batch: int, dims: int, hidden: int, sample: bool = False) -> dict:
    """Nominal FLOPs, ``N = B·D·H``: fwd ``3N`` (the logits' dots ``2N``, the running sum's additions ``N``);
    bwd ``10N`` (``∂L/∂W``, ``∂L/∂x``'s dot and ``∂L/∂V`` ``2N`` each, ``G``'s update ``3N``, recovering ``a``
    ``N``); sampling as the forward, no backward."""
    n = batch * dims * hidden
    if sample:
        return {"fwd": 3 * n, "bwd": None, "full": 3 * n}
    return {"fwd": 3 * n, "bwd": 10 * n, "full": 13 * n}


# Binarised MNIST has about 13 % ones: the density of the data (log-likelihood cases) and of a trained model's
# samples. It matters to the fused kernels, which recompute sigmoid(a) only after a step with x_i = 1 (a step
# with x_i = 0 leaves a unchanged); the eager loops' cost does not depend on it. The "dense" cases (half ones)
# show the other end.
MNIST_DENSITY, DENSE = 0.13, 0.5


def _parameters(dims: int, hidden: int, density: float, device, dtype, generator) -> dict[str, torch.Tensor]:
    """Random parameters whose samples have about ``density`` ones: ``b`` centred on ``logit(density)`` (the
    logits' other part, ``V[i]·h_i``, is centred on 0)."""
    def randn(*size):
        return torch.randn(*size, device=device, generator=generator).to(dtype)

    return {
        "W": randn(hidden, dims) * dims**-0.5 * 4.0,
        "c": randn(hidden) * 0.5,
        "V": randn(dims, hidden) * hidden**-0.5,
        "b": randn(dims) * 0.5 + math.log(density / (1 - density)),
    }


def _loglik_inputs(shape, density, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, dims, hidden = shape
    x = (torch.rand(batch, dims, device=device, generator=generator) < density).to(dtype)
    return {"x": x, **_parameters(dims, hidden, density, device, dtype, generator)}


def _sample_inputs(shape, density, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, dims, hidden = shape
    params = _parameters(dims, hidden, density, device, dtype, generator)
    return {**params, "u": torch.rand(batch, dims, device=device, generator=generator)}


def _sample_loop(W, c, V, b, u):
    """The eager per-dimension sampler as a user runs it: under ``no_grad``."""
    with torch.no_grad():
        return reference.nade_sample_loop(W, c, V, b, u)


def make_case(shape=ACCEPTANCE, dtype=torch.float32, *, sample: bool = False, density: float = MNIST_DENSITY,
              quick: bool = False, priority: int | None = None) -> Case:
    batch, dims, hidden = shape
    size = f"B{batch}xD{dims}xH{hidden}" if density == MNIST_DENSITY else f"dense-B{batch}xD{dims}xH{hidden}"
    params = {"shape": [batch, dims, hidden], "what": "sample" if sample else "log-likelihood", "ones": density}
    if sample:
        return Case(
            op="nade",
            name=f"sample-{size}-{_SHORT[dtype]}",
            make_inputs=functools.partial(_sample_inputs, shape, density),
            fns={"reference": _sample_loop, "fastflow": ops.nade_sample},
            bytes=nade_bytes(batch, dims, hidden, dtype, sample=True),
            flops=nade_flops(batch, dims, hidden, sample=True),
            dtype=dtype,
            quick=quick,
            params=params,
            work_free={"bwd": "sampling is not differentiable: there is no backward to time"},
            priority=priority,
            # compile: the D-step loop unrolled into one graph, minutes of compilation on a small CPU.
            expected_s={"fwd": 180.0},
        )
    return Case(
        op="nade",
        name=f"loglik-{size}-{_SHORT[dtype]}",
        make_inputs=functools.partial(_loglik_inputs, shape, density),
        fns={"reference": reference.nade_materialized, "fastflow": ops.nade, "loop": reference.nade},
        bytes=nade_bytes(batch, dims, hidden, dtype),
        flops=nade_flops(batch, dims, hidden),
        dtype=dtype,
        quick=quick,
        params=params,
        priority=priority,
    )


@register("nade")
def cases(device: torch.device) -> list[Case]:
    result = [make_case(quick=True), make_case(sample=True, quick=True),
              make_case(density=DENSE), make_case(sample=True, density=DENSE)]
    if device.type == "cuda":
        result += [make_case(dtype=torch.bfloat16, priority=PRIORITY_ACCEPTANCE_16BIT),
                   make_case(dtype=torch.bfloat16, sample=True, priority=PRIORITY_ACCEPTANCE_16BIT)]
    return result
