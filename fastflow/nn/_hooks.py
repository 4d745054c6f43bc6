"""Whether a module's own call would be observed: the fast paths that bypass ``nn.Module.__call__`` check this."""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as _module

__all__ = ["observed"]


def observed(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would run a hook (its own or a global one) that needs to see it run.

    A hook marked ``tolerates_fusion = True`` (the trainer's non-finite guard: it watches whatever runs, and a
    fused call's own hooks see the same values) does not count, so that the guard keeps the fast paths.
    """
    hooks = (
        layer._forward_hooks, layer._forward_pre_hooks, layer._backward_hooks, layer._backward_pre_hooks,
        _module._global_forward_hooks, _module._global_forward_pre_hooks,
        _module._global_backward_hooks, _module._global_backward_pre_hooks,
    )
    return any(not getattr(hook, "tolerates_fusion", False) for table in hooks for hook in table.values())
