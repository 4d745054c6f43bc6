"""Registry of every flow layer and flow model for the generic property suite (``test_flow_properties``).

A new layer is tested by adding one entry here, not by writing new test code. Each entry builds the module
(randomly initialised by the suite so that no coupling starts as the identity) and gives an input shape
and, for conditional layers, the shape of ``cond``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import fastflow.nn as ffnn
from fastflow.models import MAF, NICE, CouplingFlow, Glow, RealNVP


@dataclass(frozen=True)
class FlowCase:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    cond_shape: tuple[int, ...] | None = None
    #: Standard deviation of the random parameters: deep models get smaller ones, so that the composition of
    #: many random layers stays well conditioned and float64 invertibility can be held to 1e-10.
    param_std: float = 0.3


FLOW_CASES: list[FlowCase] = []


def register(
    name: str, input_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None = None, param_std: float = 0.3
):
    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        FLOW_CASES.append(FlowCase(name, build, input_shape, cond_shape, param_std))
        return build

    return decorator


for _mask in ("channel", "checkerboard"):
    for _scale in ("sigmoid", "exp"):
        for _flip in (False, True):
            register(f"affine-{_mask}-{_scale}-flip{int(_flip)}", (2, 4, 3, 5))(
                lambda m=_mask, s=_scale, f=_flip: ffnn.AffineCoupling(4, mask=m, scale=s, flip=f, hidden_channels=6)
            )
    register(f"additive-{_mask}", (2, 4, 4, 3))(
        lambda m=_mask: ffnn.AdditiveCoupling(4, mask=m, hidden_channels=6)
    )
    register(f"affine-vector-{_mask}", (3, 6))(
        lambda m=_mask: ffnn.AffineCoupling(6, mask=m, hidden_channels=8, spatial=False, flip=True)
    )
    register(f"additive-vector-{_mask}", (3, 7 if _mask == "checkerboard" else 6))(
        lambda m=_mask: ffnn.AdditiveCoupling(7 if m == "checkerboard" else 6, mask=m, hidden_channels=8, spatial=False)
    )
register("affine-conditional", (2, 4, 3, 3), cond_shape=(2, 3))(
    lambda: ffnn.AffineCoupling(4, hidden_channels=6, cond_channels=3)
)
register("squeeze", (2, 3, 4, 6))(ffnn.Squeeze)
register("flow-sequential", (2, 2, 4, 4))(
    lambda: ffnn.FlowSequential(
        ffnn.AffineCoupling(2, mask="checkerboard", hidden_channels=4),
        ffnn.Squeeze(),
        ffnn.AffineCoupling(8, hidden_channels=4, flip=True),
        ffnn.AdditiveCoupling(8, hidden_channels=4),
    )
)
# Models join through their invertible part (pre-processing and prior are tested in test_models.py).
register("coupling-flow", (2, 1, 4, 4))(
    lambda: CouplingFlow(1, 4, num_couplings=4, hidden_channels=4).flow
)
register("actnorm", (2, 3, 4, 5))(lambda: ffnn.ActNorm(3))
register("actnorm-vector", (3, 5))(lambda: ffnn.ActNorm(5))
register("invconv-lu", (2, 5, 3, 4))(lambda: ffnn.InvConv1x1(5))
register("invconv-plain", (2, 5, 3, 4))(lambda: ffnn.InvConv1x1(5, lu=False))
register("flowstep-affine", (2, 4, 3, 5))(lambda: ffnn.FlowStep(4, hidden_channels=6))
register("flowstep-additive", (2, 4, 3, 5))(lambda: ffnn.FlowStep(4, hidden_channels=6, coupling="additive"))
register("flowstep-plain-invconv-exp", (2, 6, 3, 3))(
    lambda: ffnn.FlowStep(6, hidden_channels=6, lu=False, scale="exp")
)
register("flowstep-conditional", (2, 4, 3, 3), cond_shape=(2, 2))(
    lambda: ffnn.FlowStep(4, hidden_channels=6, cond_channels=2)
)
register("split", (2, 6, 3, 4))(lambda: ffnn.Split(6))
for _memory_efficient in (False, True):
    register(f"invertible-sequential-memory{int(_memory_efficient)}", (2, 2, 4, 4))(
        lambda m=_memory_efficient: ffnn.InvertibleSequential(
            ffnn.Squeeze(),
            ffnn.FlowStep(8, hidden_channels=4),
            ffnn.FlowStep(8, hidden_channels=4, coupling="additive"),
            ffnn.Split(8),
            memory_efficient=m,
        )
    )
register("invertible-sequential-conditional", (2, 4, 3, 3), cond_shape=(2, 3))(
    lambda: ffnn.InvertibleSequential(
        ffnn.FlowStep(4, hidden_channels=4, cond_channels=3), ffnn.FlowStep(4, hidden_channels=4, cond_channels=3)
    )
)


class Latents(nn.Module):
    """A multi-scale model's invertible part as one flow layer: ``u ↦ (every level's z, flattened; log|det J|)``.

    ``inverse`` returns the log-determinant of the inverse direction as ``−log|det J|`` at the rebuilt input,
    which the Jacobian test checks against the inverse map's own Jacobian.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, u, cond=None):
        zs, logdet = self.model.encode(u)
        zs = zs if isinstance(zs, (list, tuple)) else [zs]
        return torch.cat([z.flatten(1) for z in zs], 1), logdet

    def inverse(self, z, cond=None):
        shapes = self.model.latent_shapes() if hasattr(self.model, "latent_shapes") else [(z.shape[1],)]
        sizes = [math.prod(shape) for shape in shapes]
        zs = [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, 1), shapes, strict=True)]
        u = self.model.decode(zs if len(zs) > 1 or hasattr(self.model, "latent_shapes") else zs[0])
        return u, -self.model.encode(u)[1]


for _memory_efficient in (False, True):
    register(f"glow-memory{int(_memory_efficient)}", (2, 1, 4, 4), param_std=0.1)(
        lambda m=_memory_efficient: Latents(Glow(1, 4, levels=2, depth=2, hidden_channels=16, memory_efficient=m))
    )
    register(f"realnvp-memory{int(_memory_efficient)}", (2, 1, 4, 4), param_std=0.1)(
        lambda m=_memory_efficient: Latents(
            RealNVP(1, 4, levels=2, hidden_channels=4, num_blocks=1, memory_efficient=m)
        )
    )
register("glow-additive-plain-invconv", (2, 2, 4, 4), param_std=0.1)(
    lambda: Latents(Glow(2, 4, levels=1, depth=2, hidden_channels=16, coupling="additive", lu=False))
)
register("nice", (3, 6), param_std=0.1)(lambda: Latents(NICE(6, num_couplings=4, hidden_size=8, num_hidden_layers=2)))

# Masked autoregressive flows: one layer (the natural order; a reversed order with two hidden layers) and the MAF
# model's stack of layers (orders reversed between them).
register("maf-layer", (3, 6))(lambda: ffnn.MaskedAutoregressiveFlow(6, (8,)))
register("maf-layer-reversed-deep", (3, 5))(
    lambda: ffnn.MaskedAutoregressiveFlow(5, (7, 9), order=[4, 3, 2, 1, 0], seed=3)
)
register("maf", (3, 6), param_std=0.2)(lambda: MAF(6, num_layers=3, hidden_sizes=(8,)).flow)
