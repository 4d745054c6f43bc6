"""Functional fused ops. Each is a ``torch.library`` custom op (``fastflow::<op>_<fwd|bwd>``) with a fake
function, differentiable, dispatched per call to a backend (see ``fastflow.set_backend``).

A forced ``reference`` backend (``set_backend("reference")`` or ``FASTFLOW_BACKEND=reference``) calls the
plain-PyTorch functions of ``fastflow.reference`` directly, differentiated by autograd: the specification, and
the baseline that ``torch.compile`` and the benchmarks see. The automatic fallback to the reference (a device or
dtype no kernel covers) goes through the custom ops."""

from fastflow.ops.actnorm_invconv import actnorm_invconv
from fastflow.ops.coupling import additive_coupling, affine_coupling
from fastflow.ops.masked_conv import masked_conv
from fastflow.ops.nade import nade, nade_sample  # the functions shadow the module name: import NADE from it directly

__all__ = ["actnorm_invconv", "additive_coupling", "affine_coupling", "masked_conv", "nade", "nade_sample"]
