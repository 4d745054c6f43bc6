"""A guard against training on NaN: it names the step and the layer where a non-finite value first appeared.

Forward hooks on every submodule record, on the device and without a host synchronisation, whether the
module's output holds a non-finite value. Only when the loss (or a gradient) turns out non-finite does the
guard read the records, once, and report the first module in execution order whose output went bad.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NonFiniteGuard"]


def _tensors(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


class NonFiniteGuard:
    """``guard = NonFiniteGuard(model)``; per step: ``guard.start()``, forward, then ``guard.check(step, loss)``.

    ``check`` raises ``FloatingPointError("step 12: non-finite value first in levels.0.3.coupling (AffineCoupling)")``
    when the loss or a parameter's gradient is not finite; ``close()`` removes the hooks.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._records: list[tuple[str, Tensor]] = []
        self._handles = [
            module.register_forward_hook(self._hook(name or type(model).__name__))
            for name, module in model.named_modules()
        ]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: object, output: object) -> None:
            flags = [~torch.isfinite(t.detach()).all() for t in _tensors(output) if t.is_floating_point()]
            if flags:
                self._records.append((f"{name} ({type(module).__name__})", torch.stack(flags).any()))

        # A fused Glow step need not run ActNorm and the 1×1 convolution apart for this hook (fastflow.nn.flowstep):
        # the step's own hook sees their fused output.
        record.tolerates_fusion = True
        return record

    def start(self) -> None:
        self._records = []

    def first_non_finite(self) -> str | None:
        """The first module (execution order) whose output held a non-finite value, or None."""
        if not self._records:
            return None
        bad = torch.stack([flag for _, flag in self._records]).cpu()
        hits = torch.nonzero(bad).flatten()
        return self._records[int(hits[0])][0] if len(hits) else None

    def check(self, step: int, loss: Tensor) -> None:
        """Raise a ``FloatingPointError`` naming the step and the layer if ``loss`` or a gradient is non-finite."""
        if torch.isfinite(loss).all():
            grads = [(name, p.grad) for name, p in self.model.named_parameters() if p.grad is not None]
            if grads:
                finite = torch.stack([torch.isfinite(g).all() for _, g in grads]).cpu()
                if not finite.all():
                    name = grads[int(torch.nonzero(~finite)[0])][0]
                    raise FloatingPointError(f"step {step}: non-finite gradient first in parameter {name}")
            return
        where = self.first_non_finite()
        place = f"first in {where}" if where else "in the loss only (every layer's output was finite)"
        raise FloatingPointError(f"step {step}: non-finite value {place}; lower the learning rate or check the data")

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
