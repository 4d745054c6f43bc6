"""Benchmark cases of the coupling op (``fastflow.ops.affine_coupling`` / ``additive_coupling``).

The inputs are laid out as a real Glow layer has them: the conditioner's output ``h`` ``[B, C, H, W]`` is
sliced into ``h_s = h[:, 0::2]`` and ``h_t = h[:, 1::2]`` (strided views, no copy). The acceptance shapes
(``--quick``) are Glow's channel-mask sigmoid coupling at ``B=64, C in {12, 48}, 32x32``, float32; the
checkerboard mask, RealNVP's exp scale and NICE's additive coupling run at one size; on GPU float32 and
bfloat16 grow to working sets beyond 256 MB.
"""

from __future__ import annotations

import functools

import torch

from bench.harness import Case, register
from fastflow import ops
from fastflow.reference import coupling as reference


def coupling_bytes(shape: tuple[int, int, int, int], dtype: torch.dtype, mask: str, affine: bool) -> dict:
    """Minimum bytes moved per call, each input read once and each output written once.

    With ``N = B·C·H·W`` elements of ``e`` bytes and ``B`` log-determinants of ``a`` bytes (float32, float64
    for float64 inputs):

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
    n = batch * shape[1] * shape[2] * shape[3]
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


def _inputs(shape, mask: str, affine: bool, device, dtype, generator) -> dict[str, torch.Tensor]:
    batch, channels, height, width = shape
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    if not affine:
        # NICE's conditioner outputs the shift alone: [B, C/2, H, W], contiguous.
        half = (batch, channels // 2, height, width)
        shift = torch.randn(half, device=device, dtype=dtype, generator=generator)
        return {"x": x, "shift": shift}
    # The conditioner's output h interleaves h_s and h_t on its channels (Glow's h[:, 0::2], h[:, 1::2]).
    h_channels = channels if mask == "channel" else 2 * channels
    h = torch.randn(batch, h_channels, height, width, device=device, dtype=dtype, generator=generator)
    return {"x": x, "raw_scale": h[:, 0::2], "shift": h[:, 1::2]}


def make_case(
    shape: tuple[int, int, int, int],
    dtype: torch.dtype = torch.float32,
    *,
    mask: str = "channel",
    scale: str | None = "sigmoid",
    quick: bool = False,
) -> Case:
    """A coupling case; ``scale=None`` is the additive coupling."""
    affine = scale is not None
    if affine:
        fns = {
            "reference": functools.partial(reference.affine_coupling, mask=mask, scale=scale),
            "fastflow": functools.partial(ops.affine_coupling, mask=mask, scale=scale),
        }
        kind = f"affine-{mask}-{scale}"
    else:
        fns = {
            "reference": functools.partial(reference.additive_coupling, mask=mask),
            "fastflow": functools.partial(ops.additive_coupling, mask=mask),
        }
        kind = f"additive-{mask}"
    short = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}[dtype]
    return Case(
        op="coupling",
        name=f"{kind}-B{shape[0]}xC{shape[1]}x{shape[2]}x{shape[3]}-{short}",
        make_inputs=functools.partial(_inputs, shape, mask, affine),
        fns=fns,
        bytes=coupling_bytes(shape, dtype, mask, affine),
        dtype=dtype,
        quick=quick,
        params={"shape": list(shape), "mask": mask, "scale": scale or "additive"},
    )


ACCEPTANCE_SHAPES = ((64, 12, 32, 32), (64, 48, 32, 32))
# Forward working sets (channel mask, 3N·e): 302 MB and 604 MB in float32, 151 MB and 302 MB in bfloat16.
GPU_LARGE_SHAPES = ((64, 96, 64, 64), (128, 96, 64, 64))


@register("coupling")
def cases(device: torch.device) -> list[Case]:
    result = [make_case(shape, quick=True) for shape in ACCEPTANCE_SHAPES]
    one_size = ACCEPTANCE_SHAPES[1]
    result += [
        make_case(one_size, mask="checkerboard"),
        make_case(one_size, scale="exp"),
        make_case(one_size, scale=None),
    ]
    if device.type == "cuda":
        result += [make_case(shape) for shape in GPU_LARGE_SHAPES]
        result += [make_case(shape, torch.bfloat16) for shape in ACCEPTANCE_SHAPES + GPU_LARGE_SHAPES]
    return result
