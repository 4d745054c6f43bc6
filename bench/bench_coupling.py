"""Benchmark cases of the coupling op (``fastflow.ops.affine_coupling`` / ``additive_coupling``).

Three layouts of the conditioner's output ``h``, as real layers have them:

- ``interleaved`` (the default, Glow's): ``h`` ``[B, C, H, W]`` is sliced into ``h_s = h[:, 0::2]`` and
  ``h_t = h[:, 1::2]`` (strided views, no copy);
- ``halves``: ``h_s, h_t = h.chunk(2, 1)`` (contiguous halves of each example, as many RealNVP conditioners
  split their output); the case name says ``halves``;
- vectors ``[B, D]`` (NICE/MAF-like flows on flat data, ``B=1024, D=784``): ``h`` ``[B, D]`` from an MLP, split
  by ``h.chunk(2, 1)``; the case name says ``BxD``.

The acceptance shapes (``--quick``) are Glow's channel-mask sigmoid coupling at ``B=64, C in {12, 48}, 32x32``,
float32; the checkerboard mask, RealNVP's exp scale, NICE's additive coupling and the other layouts run at one
size; on GPU float32 and bfloat16 grow to working sets beyond 256 MB, and the acceptance shapes in bfloat16 come
right after the float32 ones in a run (``harness.PRIORITY_ACCEPTANCE_16BIT``).

Providers beyond the harness's: ``plain`` (the channel-mask sigmoid cases) is Glow's coupling in the five lines
a user writes (:func:`plain_glow_coupling`), beside ``reference`` (``fastflow.reference``, the eager baseline),
so that the table shows the baseline is no slower than what a user would write instead. The additive
coupling's backward does no work in fastflow (``work_free``): it is timed but gets no speed-up.
"""

from __future__ import annotations

import functools
import math

import torch

from bench.harness import PRIORITY_ACCEPTANCE_16BIT, Case, register
from fastflow import ops
from fastflow.reference import coupling as reference


def plain_glow_coupling(x: torch.Tensor, raw_scale: torch.Tensor, shift: torch.Tensor):
    """Glow's affine coupling (channel mask, ``s = sigmoid(h_s + 2)``) as a user writes it."""
    x_a, x_b = x.chunk(2, dim=1)
    s = torch.sigmoid(raw_scale + 2.0)
    y = torch.cat([x_a, x_b * s + shift], dim=1)
    return y, torch.log(s).flatten(1).sum(1, dtype=torch.promote_types(s.dtype, torch.float32))


def coupling_bytes(shape: tuple[int, ...], dtype: torch.dtype, mask: str, affine: bool) -> dict:
    """Minimum bytes moved per call, each input read once and each output written once.

    With ``N = B·C·H·W`` (``B·D`` for vectors) elements of ``e`` bytes and ``B`` log-determinants of ``a`` bytes
    (float32, float64 for float64 inputs); the layout of ``h_s``/``h_t`` does not change the count:

    - channel mask, affine: fwd reads ``x`` (N), ``h_s`` and ``h_t`` (N/2 each), writes ``y`` (N) and
      ``logdet``: ``3N·e + B·a``. bwd reads ``g_y`` (N), the transformed half ``z_b`` (N/2), ``h_s`` (N/2) and
      ``g_logdet``, writes ``g_x`` (N), ``g_hs`` and ``g_ht`` (N/2 each): ``4N·e + B·a``.
    - checkerboard, affine: ``h_s`` and ``h_t`` have the input's shape and are read whole (their ignored
      positions share cache lines with the used ones) and the gradients are written whole: fwd ``4N·e + B·a``,
      bwd reads ``g_y``, ``z``, ``h_s`` and writes three gradients of N: ``6N·e + B·a``.
    - channel mask, additive: fwd reads ``x`` (N) and ``h_t`` (N/2), writes ``y`` (N) and ``logdet``:
      ``2.5N·e + B·a``. bwd: ``∂y/∂x`` is the identity and ``∂y/∂h_t`` a slice of it, nothing has to move,
      so no byte count (None) is given.
    - full = fwd + bwd.
    """
    batch = shape[0]
    n = math.prod(shape)
    e = torch.empty((), dtype=dtype).element_size()
    a = 8 if dtype == torch.float64 else 4
    logdet = batch * a
    if not affine:
        fwd, bwd = int(2.5 * n * e) + logdet, None
    elif mask == "channel":
        fwd, bwd = 3 * n * e + logdet, 4 * n * e + logdet
    else:
        fwd, bwd = 4 * n * e + logdet, 6 * n * e + logdet
    return {"fwd": fwd, "bwd": bwd, "full": fwd + (bwd or 0)}


def _inputs(shape, mask: str, affine: bool, layout: str, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, channels = shape[:2]
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    if not affine:
        # NICE's conditioner outputs the shift alone: [B, C/2, H, W], contiguous.
        half = (batch, channels // 2, *shape[2:])
        shift = torch.randn(half, device=device, dtype=dtype, generator=generator)
        return {"x": x, "shift": shift}
    h_channels = channels if mask == "channel" else 2 * channels
    h = torch.randn(batch, h_channels, *shape[2:], device=device, dtype=dtype, generator=generator)
    if layout == "interleaved":
        # The conditioner's output h interleaves h_s and h_t on its channels (Glow's h[:, 0::2], h[:, 1::2]).
        return {"x": x, "raw_scale": h[:, 0::2], "shift": h[:, 1::2]}
    raw_scale, shift = h.chunk(2, dim=1)  # each example's first and second halves
    return {"x": x, "raw_scale": raw_scale, "shift": shift}


_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}
LAYOUTS = ("interleaved", "halves")


def make_case(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    mask: str = "channel",
    scale: str | None = "sigmoid",
    layout: str = "interleaved",
    quick: bool = False,
    priority: int | None = None,
) -> Case:
    """A coupling case; ``scale=None`` is the additive coupling, ``shape`` ``(B, D)`` a vector case."""
    affine = scale is not None
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    vector = len(shape) == 2
    if vector:
        layout = "halves"  # an MLP's [B, D] output is split by chunk
    work_free = {}
    if affine:
        fns = {
            "reference": functools.partial(reference.affine_coupling, mask=mask, scale=scale),
            "fastflow": functools.partial(ops.affine_coupling, mask=mask, scale=scale),
        }
        if mask == "channel" and scale == "sigmoid":
            fns["plain"] = plain_glow_coupling
        kind = f"affine-{mask}-{scale}"
    else:
        fns = {
            "reference": functools.partial(reference.additive_coupling, mask=mask),
            "fastflow": functools.partial(ops.additive_coupling, mask=mask),
        }
        kind = f"additive-{mask}"
        if mask == "channel":
            work_free["bwd"] = ("y_b = x_b + h_t, so ∂y/∂x is the identity and ∂y/∂h_t a slice of it: the backward "
                                "returns the incoming gradient and a view of it, and no kernel runs")
    size = f"B{shape[0]}xD{shape[1]}" if vector else f"B{shape[0]}xC{shape[1]}x{shape[2]}x{shape[3]}"
    tag = "-halves" if layout == "halves" and not vector else ""
    return Case(
        op="coupling",
        name=f"{kind}-{size}{tag}-{_SHORT[dtype]}",
        make_inputs=functools.partial(_inputs, shape, mask, affine, layout),
        fns=fns,
        bytes=coupling_bytes(shape, dtype, mask, affine),
        dtype=dtype,
        quick=quick,
        params={"shape": list(shape), "mask": mask, "scale": scale or "additive",
                "layout": layout if affine else "shift only"},
        work_free=work_free,
        priority=priority,
    )


ACCEPTANCE_SHAPES = ((64, 12, 32, 32), (64, 48, 32, 32))
VECTOR_SHAPE = (1024, 784)  # MNIST-sized vectors, a batch of 1024: N = 803K, about the C12 image case's 786K
# Forward working sets (channel mask, 3N·e): 302 MB and 604 MB in float32, 151 MB and 302 MB in bfloat16.
GPU_LARGE_SHAPES = ((64, 96, 64, 64), (128, 96, 64, 64))


@register("coupling")
def cases(device: torch.device) -> list[Case]:
    result = [make_case(shape, quick=True) for shape in ACCEPTANCE_SHAPES]
    one_size = ACCEPTANCE_SHAPES[1]
    result += [
        make_case(one_size, layout="halves"),
        make_case(VECTOR_SHAPE),
        make_case(one_size, mask="checkerboard"),
        make_case(one_size, scale="exp"),
        make_case(one_size, scale=None),
    ]
    if device.type == "cuda":
        result += [make_case(shape) for shape in GPU_LARGE_SHAPES]
        # Glow's sizes in bfloat16 right after the float32 ones (a run under a time budget takes them second).
        result += [make_case(shape, torch.bfloat16, priority=PRIORITY_ACCEPTANCE_16BIT) for shape in ACCEPTANCE_SHAPES]
        result += [make_case(shape, torch.bfloat16) for shape in GPU_LARGE_SHAPES]
    return result
