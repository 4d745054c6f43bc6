"""Full models with ``log_prob``, ``bits_per_dim`` and ``sample``."""

from fastflow.models.charrnn import CharRNN
from fastflow.models.coupling_flow import CouplingFlow
from fastflow.models.fvsbn import FVSBN
from fastflow.models.glow import Glow
from fastflow.models.made import MADE
from fastflow.models.maf import MAF
from fastflow.models.nade import NADE
from fastflow.models.nice import NICE
from fastflow.models.pixelcnn import PixelCNN
from fastflow.models.realnvp import RealNVP

__all__ = ["CharRNN", "FVSBN", "MADE", "MAF", "NADE", "NICE", "CouplingFlow", "PixelCNN", "Glow", "RealNVP"]
