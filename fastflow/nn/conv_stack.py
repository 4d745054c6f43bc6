"""A CPU fast path for a conditioner's stack of 2-D convolutions and ReLUs (``GlowConditioner.net``).

On this CPU, oneDNN runs such a stack markedly faster on channels-last (NHWC) tensors than on NCHW ones at the
level-1 shapes of a 32×32 Glow (16×16 pixels, 6 → 128 → 128 → 12 channels: the conditioner's forward and
backward 23.2 → 14.2 ms, its forward without autograd 9.1 → 3.7 ms, batch 16, two threads), level at 8×8 and
slower at 4×4 (``bench/glow_memory.py`` and the Glow case of ``bench/`` measure the whole step); with very little
work (one 8×8 image) the fused call's fixed cost loses. So a stack whose input has at least :data:`MIN_PIXELS`
pixels and :data:`MIN_POSITIONS` positions (batch × pixels) runs in channels-last; without autograd every
convolution followed by a ReLU is one oneDNN call with the ReLU fused (``torch.ops.mkldnn._convolution_pointwise``),
which also saves the ReLU's pass. The parameters keep their layout (``state_dict`` unchanged): the weights are restrided
per call, a copy of a few KB. The result is returned contiguous (NCHW) and equals the plain stack's up to float
rounding (another summation order).

The path applies only where nothing can tell the difference: float32 on a CPU with oneDNN, no autocast, not under
``torch.compile`` (inductor chooses layouts itself) nor the forced plain reference (the benchmarks' eager
baseline), every module exactly an ``nn.Conv2d`` (zero padding, numeric padding) or ``nn.ReLU``, and no hook on
any of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow import _backends
from fastflow.nn._hooks import observed

__all__ = ["MIN_PIXELS", "MIN_POSITIONS", "applies", "run"]

#: Pixels per channel (H·W) from which channels-last pays on the CPU (16×16 and 8×8: yes; 4×4: no).
MIN_PIXELS = 64
#: Positions (B·H·W) from which it pays: one 16×16 image 1.07× (fused, no autograd), one 8×8 image 0.41×,
#: sixteen 8×8 images 1.03× (and 1.35× with autograd).
MIN_POSITIONS = 256

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fusable(module: nn.Module) -> bool:
    plain_conv = (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                  and not isinstance(module.padding, str))
    return (plain_conv or type(module) is nn.ReLU) and not observed(module)


def applies(net: nn.Sequential, x: Tensor) -> bool:
    """Whether :func:`run` may compute ``net(x)`` (see the module docstring)."""
    if torch.compiler.is_compiling():  # first: nothing below is for dynamo to trace
        return False
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
        and x.shape[2] * x.shape[3] >= MIN_PIXELS and x.shape[0] * x.shape[2] * x.shape[3] >= MIN_POSITIONS
        and _MKLDNN and not torch.is_autocast_enabled("cpu") and not _backends.plain_reference()
        and not observed(net) and all(_fusable(m) for m in net)
    )


def run(net: nn.Sequential, x: Tensor) -> Tensor:
    """``net(x)`` for ``x [B, C, H, W]`` in channels-last (fused convolution + ReLU without autograd); NCHW out."""
    h = x.contiguous(memory_format=torch.channels_last)
    modules = list(net)
    fused = not torch.is_grad_enabled()
    i = 0
    while i < len(modules):
        module = modules[i]
        if type(module) is nn.ReLU:
            h = F.relu(h)
            i += 1
            continue
        weight = module.weight.contiguous(memory_format=torch.channels_last)
        relu = fused and i + 1 < len(modules) and type(modules[i + 1]) is nn.ReLU
        if fused:
            h = torch.ops.mkldnn._convolution_pointwise(
                h, weight, module.bias, list(module.padding), list(module.stride), list(module.dilation),
                module.groups, "relu" if relu else "none", [], "",
            )
        else:
            h = F.conv2d(h, weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
        i += 2 if relu else 1
    return h.contiguous()
