"""Benchmark cases of Glow's ActNorm + invertible 1×1 convolution, of its log-determinant, and of a Glow step.

- ``actnorm_invconv``: ``fastflow.ops.actnorm_invconv`` (ActNorm folded into the LU 1×1 convolution, one pass
  over the pixels) against the reference as a user writes it (ActNorm, then ``conv2d`` with ``W`` built from
  the LU parameters). Shapes are Glow's: the acceptance ones (``--quick``) are ``B=64, C=12, 32×32`` and
  ``B=64, C=48, 16×16`` in float32; ``C=512`` is the compute-bound end.
- ``invconv_logdet``: ``log|det W|`` of the ``C×C`` weight, for ``C`` in 12…512: ``torch.linalg.slogdet`` of a
  plain weight (what a Glow without the LU parametrisation pays on every call, an LU factorisation and, in the
  backward, an inverse) against ``Σ log|s|`` of the LU parametrisation (provider ``lu``).

A Glow training step is in ``bench_glow.py``.
"""

from __future__ import annotations

import functools
import math

import torch

from bench.harness import Case, register
from fastflow import ops
from fastflow.reference import actnorm_invconv as reference

_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}


# --------------------------------------------------------------------------------------------------
# actnorm_invconv


def actnorm_invconv_bytes(shape: tuple[int, int, int, int], dtype: torch.dtype) -> dict:
    """Minimum bytes per call with ``N = B·C·H·W`` elements of ``e`` bytes (the ``C×C`` parameters are noise).

    fwd reads ``x`` and writes ``y``: ``2N·e``. bwd reads ``g_y`` and ``x`` and writes ``g_x``: ``3N·e``
    (``g_W = Σ g·xᵀ`` and ``g_b`` are ``C² + C`` numbers). full = fwd + bwd.
    """
    n = math.prod(shape)
    e = torch.empty((), dtype=dtype).element_size()
    return {"fwd": 2 * n * e, "bwd": 3 * n * e, "full": 5 * n * e}


def actnorm_invconv_flops(shape: tuple[int, int, int, int]) -> dict:
    """``2·B·H·W·C²`` for the forward's per-pixel matrix product, twice that for the backward (``g_x``, ``g_W``)."""
    batch, channels, height, width = shape
    fwd = 2 * batch * height * width * channels**2
    return {"fwd": fwd, "bwd": 2 * fwd, "full": 3 * fwd}


def _lu_parameters(channels: int, device, generator) -> dict[str, torch.Tensor]:
    """LU parameters of a random rotation, perturbed, as ``InvConv1x1`` holds them after some training."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
    p, lower, upper = torch.linalg.lu(q)
    s = torch.diagonal(upper)
    return {
        "lower": torch.tril(lower, -1).float().to(device),
        "upper": torch.triu(upper, 1).float().to(device),
        "log_s": torch.log(s.abs()).float().to(device),
        "perm": p.argmax(dim=1).to(device),
        "sign_s": torch.sign(s).float().to(device),
    }


def _actnorm_invconv_inputs(shape, fixed, device, dtype, generator) -> dict[str, torch.Tensor]:
    channels = shape[1]
    params = _lu_parameters(channels, device, torch.Generator().manual_seed(channels))
    fixed.update(perm=params.pop("perm"), sign_s=params.pop("sign_s"))
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    log_scale = 0.1 * torch.randn(channels, device=device, generator=generator)
    bias = 0.1 * torch.randn(channels, device=device, generator=generator)
    return {"x": x, "log_scale": log_scale, "bias": bias, **params}


def _with_fixed(fn, fixed: dict):
    """``fn(**inputs, perm=…, sign_s=…)``: the permutation and signs are buffers, not differentiable inputs."""
    return lambda **inputs: fn(**inputs, **fixed)


def make_actnorm_invconv_case(shape, dtype=torch.float32, *, quick: bool = False) -> Case:
    fixed: dict[str, torch.Tensor] = {}
    return Case(
        op="actnorm_invconv",
        name=f"B{shape[0]}xC{shape[1]}x{shape[2]}x{shape[3]}-{_SHORT[dtype]}",
        make_inputs=functools.partial(_actnorm_invconv_inputs, shape, fixed),
        fns={
            "reference": _with_fixed(reference.actnorm_invconv, fixed),
            "fastflow": _with_fixed(ops.actnorm_invconv, fixed),
        },
        bytes=actnorm_invconv_bytes(shape, dtype),
        flops=actnorm_invconv_flops(shape),
        dtype=dtype,
        quick=quick,
        params={"shape": list(shape)},
    )


ACCEPTANCE_SHAPES = ((64, 12, 32, 32), (64, 48, 16, 16))
CPU_SHAPES = ((16, 512, 8, 8),)
# Forward working sets (2N·e): 201 MB and 402 MB in float32.
GPU_LARGE_SHAPES = ((64, 48, 64, 64), (128, 48, 64, 64), (64, 512, 16, 16))


@register("actnorm_invconv")
def actnorm_invconv_cases(device: torch.device) -> list[Case]:
    result = [make_actnorm_invconv_case(shape, quick=True) for shape in ACCEPTANCE_SHAPES]
    result += [make_actnorm_invconv_case(shape) for shape in CPU_SHAPES]
    if device.type == "cuda":
        result += [make_actnorm_invconv_case(shape) for shape in GPU_LARGE_SHAPES]
        result += [make_actnorm_invconv_case(shape, torch.bfloat16) for shape in ACCEPTANCE_SHAPES + GPU_LARGE_SHAPES]
    return result


# --------------------------------------------------------------------------------------------------
# invconv_logdet


def _logdet_inputs(channels, device, dtype, generator) -> dict[str, torch.Tensor]:
    params = _lu_parameters(channels, device, torch.Generator().manual_seed(channels))
    weight = reference.lu_weight(params["lower"], params["upper"], params["log_s"], perm=params["perm"],
                                 sign_s=params["sign_s"])
    return {"weight": weight.to(dtype), "log_s": params["log_s"].to(dtype)}


def _slogdet(weight: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    return torch.linalg.slogdet(weight)[1]


def _lu_logdet(weight: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    return reference.logdet(None, log_s, 1, 1, log_s.dtype)


LOGDET_CHANNELS = (12, 48, 96, 192, 384, 512)


@register("invconv_logdet")
def invconv_logdet_cases(device: torch.device) -> list[Case]:
    return [
        Case(
            op="invconv_logdet",
            name=f"C{channels}-f32",
            make_inputs=functools.partial(_logdet_inputs, channels),
            fns={"reference": _slogdet, "lu": _lu_logdet},
            bytes={},
            quick=channels in (12, 512),
            params={"channels": channels},
        )
        for channels in LOGDET_CHANNELS
    ]
