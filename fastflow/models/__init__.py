"""Full models with ``log_prob``, ``bits_per_dim`` and ``sample``."""

from fastflow.models.coupling_flow import CouplingFlow

__all__ = ["CouplingFlow"]
