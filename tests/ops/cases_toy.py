"""A toy op declared in the test suite — one declaration, one registry entry — to show that an op gets the whole
generic op suite (``test_generic.py``) and the dispatch machinery from them alone.

``toy_affine(x, log_scale, shift) -> (y, logdet)``: ``y = x·exp(log_scale) + shift`` elementwise on ``[B, D]``,
``logdet = Σ_d log_scale`` per row. Two backends: the reference (plain PyTorch, any device and dtype) and a ``cpu``
one (float32 and float64, computed in a different way) that ``supports`` rows of at most ``MAX_WIDTH`` elements
only, so that a per-call support condition, its reason and the selection cache are exercised too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow import _backends
from fastflow.ops.declaration import FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference.numerics import accumulation_dtype
from tests.ops.registry import OpCase, OpEntry, register

MAX_WIDTH = 16


def toy_affine_reference(x: Tensor, log_scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """The specification: ``(x·exp(a) + t, Σ a)``."""
    return x * torch.exp(log_scale) + shift, log_scale.to(accumulation_dtype(x.dtype)).sum(1)


def _reference_fwd(x, log_scale, shift):
    y, logdet = toy_affine_reference(x, log_scale, shift)
    return y.contiguous(), logdet


def _reference_bwd(grad_y, grad_logdet, x, log_scale):
    scale = torch.exp(log_scale)
    grad_x = grad_y * scale
    grad_log_scale = grad_x * x + grad_logdet.to(x.dtype)[:, None]
    return grad_x.contiguous(), grad_log_scale.contiguous(), grad_y.clone(memory_format=torch.contiguous_format)


def _cpu_fwd(x, log_scale, shift):
    # Computed in float64 whatever the input: a different path from the reference, same contract.
    y = torch.addcmul(shift.double(), x.double(), log_scale.double().exp())
    return y.to(x.dtype).contiguous(), log_scale.double().sum(1).to(accumulation_dtype(x.dtype))


def _cpu_bwd(grad_y, grad_logdet, x, log_scale):
    g = grad_y.double()
    grad_x = g * log_scale.double().exp()
    grad_log_scale = torch.addcmul(grad_logdet.double()[:, None].expand_as(g), grad_x, x.double())
    return grad_x.to(x.dtype), grad_log_scale.to(x.dtype), grad_y.to(x.dtype, copy=True).contiguous()


def _fake_fwd(x, log_scale, shift):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return y, x.new_empty(x.shape[0], dtype=accumulation_dtype(x.dtype))


def _fake_bwd(grad_y, grad_logdet, x, log_scale):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3))


def _supports(x, log_scale, shift):
    return None if x.shape[1] <= MAX_WIDTH else f"rows of at most {MAX_WIDTH} elements, got {x.shape[1]}"


def _setup_context(ctx, inputs, output):
    x, log_scale, _ = inputs
    ctx.save_for_backward(x, log_scale)


def _backward(ctx, grad_y, grad_logdet):
    x, log_scale = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if grad_logdet is None:
        grad_logdet = x.new_zeros(x.shape[0], dtype=accumulation_dtype(x.dtype))
    return TOY.call("bwd", grad_y.contiguous(), grad_logdet, x, log_scale, backend=ctx.backend)


TOY = Op(
    "toy_affine",
    stages={
        "fwd": Stage("(Tensor x, Tensor log_scale, Tensor shift) -> (Tensor, Tensor)", fake=_fake_fwd),
        "bwd": Stage(
            "(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor log_scale) -> (Tensor, Tensor, Tensor)",
            fake=_fake_bwd,
            lead="x",
        ),
    },
    backends={
        "reference": Implementation(FLOATS, {"fwd": _reference_fwd, "bwd": _reference_bwd}),
        "cpu": Implementation(frozenset({torch.float32, torch.float64}), {"fwd": _cpu_fwd, "bwd": _cpu_bwd},
                              supports=_supports),
    },
    autograd=Autograd(_setup_context, _backward),
    support_key=lambda x, log_scale, shift: x.shape[1] <= MAX_WIDTH,
)


def toy_affine(x: Tensor, log_scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """The public function: the plain reference when ``reference`` is forced, else the custom op."""
    if _backends.plain_reference():
        return toy_affine_reference(x, log_scale, shift)
    return TOY.call("fwd", x, log_scale, shift)


def _make_case(batch: int, width: int, layout: str) -> OpCase:
    def leaves(device, dtype, generator):
        x = torch.randn(batch, 2 * width, generator=generator)
        if layout == "strided":
            x = x[:, ::2]
        else:
            x = x[:, :width].contiguous()
        log_scale = 0.5 * torch.randn(batch, width, generator=generator)
        shift = torch.randn(width, batch, generator=generator).t()  # transposed: non-contiguous
        return {name: t.to(device=device, dtype=dtype) for name, t in
                {"x": x, "log_scale": log_scale, "shift": shift}.items()}

    return OpCase(f"B{batch}xD{width}-{layout}", leaves, toy_affine,
                  opcheck=batch == 3, compile=batch == 3 and layout == "strided")


def _check(outputs, leaves, dtype, backend):
    y, logdet = outputs
    assert y.dtype == dtype and y.shape == leaves["x"].shape
    assert logdet.dtype == accumulation_dtype(dtype)


register(OpEntry(
    op="toy_affine",
    outputs=("y", "logdet"),
    cases=[_make_case(3, 5, "strided"), _make_case(0, 4, "contiguous"), _make_case(2, MAX_WIDTH + 3, "contiguous")],
    check=_check,
))
