"""Functional fused ops. Each is a ``torch.library`` custom op (``fastflow::<op>_<fwd|bwd>``) with a fake
function, differentiable, dispatched per call to a backend (see ``fastflow.set_backend``)."""

from fastflow.ops.actnorm_invconv import actnorm_invconv
from fastflow.ops.coupling import additive_coupling, affine_coupling

__all__ = ["actnorm_invconv", "additive_coupling", "affine_coupling"]
