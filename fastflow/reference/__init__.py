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

# Not the specification ``nade`` itself: that name stays the module's (``fastflow.reference.nade.nade``).
from fastflow.reference.nade import (
    nade_backward,
    nade_materialized,
    nade_sample,
    nade_sample_loop,
    nade_scan,
)

__all__ = [
    "CLAMP",
    "additive_coupling",
    "affine_coupling",
    "affine_coupling_backward",
    "checkerboard_mask",
    "log_scale",
    "nade_backward",
    "nade_materialized",
    "nade_sample",
    "nade_sample_loop",
    "nade_scan",
]
