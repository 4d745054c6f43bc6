"""The nade op's cases for the generic op suite: irregular shapes (``B = 1``, an empty batch, ``H = 1``, hidden sizes
past one Triton tile under the interpreter), strided and transposed inputs (``x`` a column slice, ``W`` the
transpose of a ``[D, H]`` buffer, ``V`` and ``c`` strided views), an order, and a batch large enough for several
batch chunks / blocks of the backward. ``x`` is binary; every input, ``x`` included, gets its gradient checked."""

from __future__ import annotations

import torch

from fastflow.ops import nade, nade_sample
from fastflow.reference.numerics import accumulation_dtype
from tests.ops.registry import OpCase, OpEntry, register


def nade_leaves(batch: int, dims: int, hidden: int, layout: str, device, dtype, generator) -> dict[str, torch.Tensor]:
    """``x`` (0/1), ``W``, ``c``, ``V``, ``b`` at the scale of a trained model; ``layout="strided"`` gives each a
    non-contiguous view."""
    x = (torch.rand(batch, dims, generator=generator) < 0.4).float()
    W = torch.randn(hidden, dims, generator=generator) / dims**0.5
    c = 0.5 * torch.randn(hidden, generator=generator)
    V = torch.randn(dims, hidden, generator=generator) / hidden**0.5
    b = 0.5 * torch.randn(dims, generator=generator)
    if layout == "strided":
        x = torch.stack([x, 1 - x], dim=2).flatten(1)[:, ::2]  # every other column of [B, 2D]
        W = W.t().contiguous().t()  # the transpose of a [D, H] buffer
        c = torch.stack([c, -c], dim=1).flatten()[::2]
        V = torch.stack([V, -V], dim=2).flatten(1)[:, ::2]
    tensors = {"x": x, "W": W, "c": c, "V": V, "b": b}
    return {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}


def _make_case(batch: int, dims: int, hidden: int, layout: str = "contiguous", order: list[int] | None = None,
               opcheck: bool = False, compile: bool = False) -> OpCase:
    def leaves(device, dtype, generator):
        return nade_leaves(batch, dims, hidden, layout, device, dtype, generator)

    def call(x, W, c, V, b):
        return nade(x, W, c, V, b, order=order)

    name = f"B{batch}xD{dims}xH{hidden}-{layout}" + ("-order" if order is not None else "")
    return OpCase(name, leaves, call, opcheck=opcheck, compile=compile)


def _sample_case(batch: int, dims: int, hidden: int, layout: str = "contiguous") -> OpCase:
    """One call of the sampler (not differentiable: the values are test_nade.py's, gpu_kernels runs the kernel)."""
    def leaves(device, dtype, generator):
        tensors = nade_leaves(batch, dims, hidden, layout, device, dtype, generator)
        tensors["u"] = torch.rand(batch, dims, generator=generator).to(device=device, dtype=dtype)
        del tensors["x"]
        return tensors

    def call(W, c, V, b, u):
        return nade_sample(W.detach(), c.detach(), V.detach(), b.detach(), u.detach())

    return OpCase(f"sample-B{batch}xD{dims}xH{hidden}-{layout}", leaves, call)


def _check(outputs, leaves, dtype, backend):
    logits, log_prob = outputs
    x = leaves["x"]
    assert logits.dtype == dtype and logits.shape == x.shape
    assert log_prob.dtype == accumulation_dtype(dtype) and log_prob.shape == (x.shape[0],)


register(OpEntry(
    op="nade",
    outputs=("logits", "log_prob"),
    cases=[
        _make_case(3, 7, 5, opcheck=True, compile=True),
        _make_case(1, 4, 13),  # H past one Triton tile under the interpreter (8): the scratch-buffer path
        _make_case(0, 5, 4),
        _make_case(4, 6, 1),
        _make_case(5, 9, 6, layout="strided", opcheck=True),
        _make_case(4, 6, 5, order=[3, 0, 5, 1, 4, 2]),
        _make_case(40, 5, 3),  # several batch chunks (CPU) and blocks per program (Triton) in the backward
    ],
    check=_check,
    other_calls=[_sample_case(3, 7, 5), _sample_case(1, 4, 13), _sample_case(0, 5, 4),
                 _sample_case(5, 9, 6, layout="strided"), _sample_case(40, 5, 3)],
))
