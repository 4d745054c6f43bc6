"""Plain-PyTorch implementation of every fused op: the specification, the fallback and the benchmark baseline.

Each formula lives here once; kernels, tests and benchmarks are checked against (or import) these.
"""

from fastflow.reference.coupling import (
    CLAMP,
    additive_coupling,
    affine_coupling,
    affine_coupling_backward,
    checkerboard_mask,
    log_scale,
)

__all__ = [
    "CLAMP",
    "additive_coupling",
    "affine_coupling",
    "affine_coupling_backward",
    "checkerboard_mask",
    "log_scale",
]
