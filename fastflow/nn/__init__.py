"""Drop-in ``nn.Module`` layers built on the fused ops.

Every flow layer has ``forward(x, cond=None) -> (y, logdet)`` and ``inverse(y, cond=None) -> (x, logdet)``
with ``logdet`` of shape ``[B]``, the log-determinant of the direction called.
"""

from fastflow.nn.actnorm import ActNorm
from fastflow.nn.container import FlowSequential
from fastflow.nn.coupling import AdditiveCoupling, AffineCoupling, GlowConditioner, MLPConditioner
from fastflow.nn.flowstep import FlowStep
from fastflow.nn.invconv import InvConv1x1
from fastflow.nn.masked import MaskedAutoregressiveFlow, MaskedLinear, MaskedMLP
from fastflow.nn.masked_conv import MaskedConv2d
from fastflow.nn.memory import InvertibleSequential
from fastflow.nn.resnet import ResNetConditioner
from fastflow.nn.rnn import LSTM, RNN, LSTMCell
from fastflow.nn.split import Split
from fastflow.nn.squeeze import Squeeze
from fastflow.nn.zeroconv import ZeroConv2d

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "FlowSequential",
    "FlowStep",
    "GlowConditioner",
    "InvConv1x1",
    "InvertibleSequential",
    "LSTM",
    "LSTMCell",
    "MLPConditioner",
    "MaskedAutoregressiveFlow",
    "MaskedConv2d",
    "MaskedLinear",
    "MaskedMLP",
    "RNN",
    "ResNetConditioner",
    "Split",
    "Squeeze",
    "ZeroConv2d",
]
