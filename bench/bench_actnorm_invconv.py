"""Benchmark cases of Glow's ActNorm + invertible 1×1 convolution, of the LU-parametrised layer, and of a Glow step.

- ``actnorm_invconv``: ``fastflow.ops.actnorm_invconv`` (ActNorm folded into the LU 1×1 convolution, one pass
  over the pixels) against the reference as a user writes it (ActNorm, then ``conv2d`` with ``W`` built from
  the LU parameters). Shapes are Glow's: the acceptance ones (``--quick``) are ``B=64, C=12, 32×32`` and
  ``B=64, C=48, 16×16`` in float32; ``C=512`` is the compute-bound end.
- ``invconv``: what the LU parametrisation saves a user, layer against layer: ``fastflow.nn.InvConv1x1(C,
  lu=True)`` (``W`` built from the LU parameters on every call, ``log|det W| = Σ log|s|``, the inverse by
  triangular solves, the pixels by fastflow's op) against ``InvConv1x1(C, lu=False)`` (a plain weight:
  ``torch.linalg.slogdet`` on every call and, for the inverse, ``torch.linalg.inv``; its backward goes through
  both). Each direction (``forward``, ``inverse``) is a case of its own, for Glow's ``C`` in 12…512; see
  :func:`invconv_cases` for the shapes and the providers.

A Glow training step is in ``bench_glow.py``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import fastflow
from bench.harness import PRIORITY_ACCEPTANCE_16BIT, Case, register
from fastflow import ops
from fastflow.nn import InvConv1x1
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


def make_actnorm_invconv_case(shape, dtype=torch.float32, *, quick: bool = False, priority: int | None = None) -> Case:
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
        priority=priority,
    )


ACCEPTANCE_SHAPES = ((64, 12, 32, 32), (64, 48, 16, 16))
CPU_SHAPES = ((16, 512, 8, 8),)
# Forward working sets (2N·e): 201 MB and 402 MB in float32 (full, 5N·e: 503 MB and 1 GB), 67 MB at C = 512.
GPU_LARGE_SHAPES = ((64, 48, 64, 64), (128, 48, 64, 64), (64, 512, 16, 16))
# bfloat16 halves them: one more batch doubling keeps a working set of 256 MB or more (full: 503 MB).
GPU_LARGE_16BIT_SHAPES = GPU_LARGE_SHAPES + ((256, 48, 64, 64),)


@register("actnorm_invconv")
def actnorm_invconv_cases(device: torch.device) -> list[Case]:
    result = [make_actnorm_invconv_case(shape, quick=True) for shape in ACCEPTANCE_SHAPES]
    result += [make_actnorm_invconv_case(shape) for shape in CPU_SHAPES]
    if device.type == "cuda":
        result += [make_actnorm_invconv_case(shape) for shape in GPU_LARGE_SHAPES]
        # Glow's sizes in bfloat16 right after the float32 ones (a run under a time budget takes them second).
        result += [make_actnorm_invconv_case(shape, torch.bfloat16, priority=PRIORITY_ACCEPTANCE_16BIT)
                   for shape in ACCEPTANCE_SHAPES]
        result += [make_actnorm_invconv_case(shape, torch.bfloat16) for shape in GPU_LARGE_16BIT_SHAPES]
    return result


# --------------------------------------------------------------------------------------------------
# invconv: the LU layer against the plain-weight layer


class _Direction(nn.Module):
    """``layer(x)`` or ``layer.inverse(x)`` as a module's forward, so that ``functional_call`` can run either."""

    def __init__(self, layer: InvConv1x1, inverse: bool):
        super().__init__()
        self.layer, self.inverse = layer, inverse

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.inverse(x) if self.inverse else self.layer(x)


# The layers by (C, direction, device of the inputs). A plain dict, not ``functools.cache``: the calls below are
# compiled, and dynamo ignores a cache wrapper and traces the wrapped function (building both layers: a QR and an
# LU of a random C×C matrix) into every compiled graph. A dict lookup is traced as a constant. Keyed by a
# tensor's device (``cuda:0``, never ``cuda``), so that the inputs and the calls find the same layers.
_LAYERS: dict[tuple[int, bool, torch.device], tuple[_Direction, _Direction]] = {}


def _invconv_layers(channels: int, inverse: bool, device: torch.device) -> tuple[_Direction, _Direction]:
    """``(LU layer, plain layer)`` computing the same map: the plain weight is the LU layer's ``W``."""
    key = (channels, inverse, device)
    if key not in _LAYERS:
        torch.manual_seed(channels)
        lu_layer = InvConv1x1(channels, lu=True)
        plain_layer = InvConv1x1(channels, lu=False)
        with torch.no_grad():
            plain_layer.weight.copy_(lu_layer.matrix())
        _LAYERS[key] = (_Direction(lu_layer, inverse).to(device), _Direction(plain_layer, inverse).to(device))
    return _LAYERS[key]


def _invconv_inputs(shape, inverse, device, dtype, generator) -> dict[str, torch.Tensor]:
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    lu_layer, plain_layer = _invconv_layers(shape[1], inverse, x.device)
    # Parameters are inputs (functional_call), so that every provider computes their gradients as in training.
    params = {name.removeprefix("layer."): p.detach().clone() for name, p in lu_layer.named_parameters()}
    params["weight"] = plain_layer.layer.weight.detach().clone()
    return {"x": x, **params}


def _lu_layer_call(inverse, x, lower, upper, log_s, weight):
    lu_layer, _ = _LAYERS[(x.shape[1], inverse, x.device)]  # built by _invconv_inputs, which runs first
    params = {"layer.lower": lower, "layer.upper": upper, "layer.log_s": log_s}
    return torch.func.functional_call(lu_layer, params, (x,))


def _plain_layer_call(inverse, x, lower, upper, log_s, weight):
    _, plain_layer = _LAYERS[(x.shape[1], inverse, x.device)]
    return torch.func.functional_call(plain_layer, {"layer.weight": weight}, (x,))


def invconv_bytes(shape: tuple[int, int, int, int], dtype: torch.dtype) -> dict:
    """As :func:`actnorm_invconv_bytes` (the pixels: ``2N·e`` fwd, ``3N·e`` bwd); the ``C×C`` parameters and
    their gradients (``C²`` to ``2C² + C`` numbers, depending on the provider) are not counted."""
    return actnorm_invconv_bytes(shape, dtype)


def _reference_backend():
    return fastflow.set_backend("reference")


def make_invconv_case(shape, inverse: bool, *, quick: bool = False) -> Case:
    direction = "inverse" if inverse else "forward"
    lu_call = functools.partial(_lu_layer_call, inverse)
    return Case(
        op="invconv",
        name=f"{direction}-B{shape[0]}xC{shape[1]}x{shape[2]}x{shape[3]}-f32",
        make_inputs=functools.partial(_invconv_inputs, shape, inverse),
        fns={"reference": functools.partial(_plain_layer_call, inverse), "fastflow": lu_call, "lu-reference": lu_call},
        bytes=invconv_bytes(shape, torch.float32),
        flops=actnorm_invconv_flops(shape),
        quick=quick,
        params={"shape": list(shape), "direction": direction, "reference": "InvConv1x1(C, lu=False)",
                "fastflow": "InvConv1x1(C, lu=True)"},
        contexts={"lu-reference": _reference_backend},
        uses=("actnorm_invconv",),
    )


# (C, side): the spatial size a multi-scale Glow on 256×256 images (CelebA-HQ, 6 levels) has at that width —
# level L has C = 3·4^L/2^(L−1) channels at side 256/2^L (12 at 128², 48 at 32², ... 384 at 4²); C = 512 (wider
# than any of its steps: Glow's hidden width) at that deepest 4×4.
INVCONV_SHAPES = ((12, 128), (48, 32), (96, 16), (192, 8), (384, 4), (512, 4))
INVCONV_BATCH = 16


@register("invconv")
def invconv_cases(device: torch.device) -> list[Case]:
    """The LU layer against the plain-weight layer, for each direction, at Glow's widths and pixel counts.

    Shapes: batch 16 (a GPU-sized Glow batch on 256×256 images; the layer's cost per example is what matters)
    at the spatial size each width has in a 6-level Glow on 256×256 images (:data:`INVCONV_SHAPES`). These
    are realistic pixel counts, so the comparison includes the per-pixel product that both layers pay and does
    not overstate the gain of the ``C×C`` algebra (``slogdet``, ``inv`` and their backward against building
    ``W = P·L·U``, ``Σ log|s|`` and two triangular solves): the pixels dominate at ``C = 12`` (``128²``), the
    algebra at ``C = 512`` (``4²``), where building ``W`` is itself a ``C³`` product and the LU layer's forward
    need not be cheaper than ``slogdet``.

    Providers: ``reference`` is the plain-weight layer in eager PyTorch (what a Glow without the LU
    parametrisation runs), ``compile`` its ``torch.compile``; ``cpu``/``triton``/``cuda`` the LU layer under that
    fastflow backend, ``fastflow+compile`` the LU layer compiled (automatic backend); ``lu-reference`` the LU
    layer in plain PyTorch (``fastflow.set_backend("reference")``: the parametrisation's gain without the fused
    kernel).
    """
    return [
        make_invconv_case((INVCONV_BATCH, channels, side, side), inverse, quick=channels in (12, 512))
        for channels, side in INVCONV_SHAPES
        for inverse in (False, True)
    ]
