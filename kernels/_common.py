"""Host-side helpers that every Triton kernel module of fastflow shares: interpreter detection, the SM count of a
GPU, and the autotuning spaces' factory.

Nothing here is a kernel; the kernel modules (``coupling``, ``actnorm_invconv``) import it so that none of them
keeps its own copy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import torch
import triton
import triton.language as tl

#: True when Triton runs kernels through its interpreter (``TRITON_INTERPRET``, read once, at import: Triton
#: itself reads it when it is first imported, so a later change would not take effect anyway).
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached per GPU); 1 for a CPU tensor (the interpreter).

    The launchers size their grids in programs per SM: on the CPU one "SM" keeps the interpreter's grids small.
    """
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


#: ``FASTFLOW_TRITON_AUTOTUNE=0``: one config per kernel on a GPU too (the first of its space), so that a test run
#: compiles each kernel variant once instead of once per config; the GPU check's tests and compute-sanitizer set
#: it. The benchmarks autotune.
AUTOTUNE: bool = os.environ.get("FASTFLOW_TRITON_AUTOTUNE", "1") not in ("", "0")


def autotune_configs(space: Iterable[triton.Config], interpreted: dict[str, int]) -> list[triton.Config]:
    """The autotuning space ``space`` on a GPU (its first config alone without :data:`AUTOTUNE`); under the
    interpreter the single config ``interpreted``.

    The interpreter would run every config of a space at every new key (slowly, and to no purpose: timings of
    the interpreter say nothing), so it gets one small config, one warp.
    """
    if INTERPRETED:
        return [triton.Config(dict(interpreted), num_warps=1)]
    configs = list(space)
    return configs if AUTOTUNE else configs[:1]


def tile_configs(names: tuple[str, str, str], rows: Iterable[tuple[int, int, int, int, int]],
                 interpreted_block: int = 16) -> list[triton.Config]:
    """:func:`autotune_configs` of a GEMM-like kernel's three block sizes ``names``: ``rows`` of ``(block, block,
    block, num_warps, num_stages)``; under the interpreter every block ``interpreted_block`` (``tl.dot``'s 16)."""
    space = (triton.Config(dict(zip(names, row[:3], strict=True)), num_warps=row[3], num_stages=row[4])
             for row in rows)
    return autotune_configs(space, interpreted=dict.fromkeys(names, interpreted_block))


# The interpreter's tl.dot multiplies bfloat16 tensors as their raw 16-bit integers: there, 16-bit operands go to
# float32 after their rounding (the same products: 16-bit products are exact in float32).
UPCAST_DOT_OPERANDS = tl.constexpr(INTERPRETED)


def cudnn_conv_allows_tf32() -> bool:
    """Whether PyTorch's ``conv2d`` (cuDNN) runs float32 convolutions in TF32 now (its default: yes)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", None)
    if precision is None:  # before PyTorch 2.9: the one flag
        return bool(torch.backends.cudnn.allow_tf32)
    # The per-operator setting, "none" inheriting from cuDNN's, then from the global one.
    for parent in (torch.backends.cudnn, torch.backends):
        if precision != "none":
            break
        precision = parent.fp32_precision
    return precision == "tf32"
