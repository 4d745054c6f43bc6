"""Registry of every flow layer and flow model for the generic property suite (``test_flow_properties``).

A new layer is tested by adding one entry here, not by writing new test code. Each entry builds the module
(randomly initialised by the suite so that no coupling starts as the identity) and gives an input shape
and, for conditional layers, the shape of ``cond``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import fastflow.nn as ffnn
from fastflow.models import CouplingFlow


@dataclass(frozen=True)
class FlowCase:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    cond_shape: tuple[int, ...] | None = None


FLOW_CASES: list[FlowCase] = []


def register(name: str, input_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None = None):
    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        FLOW_CASES.append(FlowCase(name, build, input_shape, cond_shape))
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
