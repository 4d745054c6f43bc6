"""Functional fused ops. Each is a ``torch.library`` custom op (``fastflow::<op>_<fwd|bwd>``) with a fake
function, differentiable, dispatched per call to a backend (see ``fastflow.set_backend``)."""

from fastflow.ops.coupling import additive_coupling, affine_coupling

__all__ = ["additive_coupling", "affine_coupling"]
