"""Drop-in ``nn.Module`` layers built on the fused ops.

Every flow layer has ``forward(x, cond=None) -> (y, logdet)`` and ``inverse(y, cond=None) -> (x, logdet)``
with ``logdet`` of shape ``[B]``, the log-determinant of the direction called.
"""

from fastflow.nn.container import FlowSequential
from fastflow.nn.coupling import AdditiveCoupling, AffineCoupling, GlowConditioner, MLPConditioner
from fastflow.nn.squeeze import Squeeze

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "FlowSequential",
    "GlowConditioner",
    "MLPConditioner",
    "Squeeze",
]
