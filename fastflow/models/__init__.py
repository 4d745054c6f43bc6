"""Full models with ``log_prob``, ``bits_per_dim`` and ``sample``."""

from fastflow.models.coupling_flow import CouplingFlow
from fastflow.models.glow import Glow
from fastflow.models.nice import NICE
from fastflow.models.realnvp import RealNVP

__all__ = ["NICE", "CouplingFlow", "Glow", "RealNVP"]
