"""One declaration per fused op, from which its custom ops, fake functions, autograd glue and dispatch come.

An op (one set of stages: a forward and its backward, or a sampler, ...) is declared once::

    COUPLING = Op(
        "coupling",
        stages={"fwd": Stage("(Tensor x, ...) -> (Tensor, Tensor)", fake=..., lead="x"),
                "bwd": Stage("(Tensor grad_y, ...) -> (Tensor, Tensor, Tensor)", fake=..., lead="z")},
        backends={"reference": Implementation(FLOATS, {"fwd": ..., "bwd": ...}),
                  "cpu": Implementation(dtypes, EXTENSION),
                  "triton": Implementation(dtypes, "fastflow.kernels.coupling", supports=...)},
        autograd=Autograd(setup_context, backward),
    )

and gets:

- a ``torch.library`` custom op ``fastflow::<op>_<stage>`` per stage, with the stage's schema plus a trailing
  ``str backend`` argument, and the stage's fake (meta) function, so that it works under ``torch.compile``;
- dispatch: the first stage (the *entry*, e.g. ``fwd``) takes the requested backend (``"auto"`` or a forced
  name) and runs on the backend :meth:`Op.select` picks, from a cache keyed by (device, dtype, requested
  backend, the arguments ``support_key`` names); the other stages (the backward) take the name of the backend
  that ran the entry stage, which :class:`Autograd` saves on the autograd context: a backward runs where its
  forward ran, whatever ``set_backend`` says when it runs;
- the autograd registration of the entry stage, from the op's ``setup_context`` / ``backward``;
- ``why_not`` answers for ``fastflow.backend_info``, the error of a forced backend and the benchmarks.

Backend implementations of a stage are a Python callable taking the stage's arguments, a module path whose
function ``<op>_<stage>`` is imported on first use (Triton kernels: importing fastflow never imports Triton), or
:data:`EXTENSION`, the compiled ``torch.ops.fastflow_C.<op>_<stage>``, whose C++ schema must equal the declared
one (a test checks). ``supports(*entry_args) -> reason | None`` sees the entry call's arguments (on fake tensors
too, under ``torch.compile``: it may read shapes, dtypes and options, never data).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import torch

from fastflow import _backends
from fastflow._backends import BACKENDS, FLOATS, BackendError

__all__ = ["EXTENSION", "FLOATS", "Autograd", "Implementation", "Op", "Stage"]

#: A backend whose stages are the compiled extension's ``torch.ops.fastflow_C.<op>_<stage>``.
EXTENSION = "fastflow_C"

_NAMESPACE = "fastflow"


@dataclass(frozen=True)
class Stage:
    """One stage of an op.

    Attributes:
        schema: the kernel's schema without a name, e.g. ``"(Tensor x, Tensor w) -> Tensor"``; the custom op
            appends ``str backend``.
        fake: the fake (meta) function of the stage's arguments: output tensors of the right shape, dtype and
            device, no data.
        lead: the argument whose device and dtype choose the backend (default: the first tensor argument).
    """

    schema: str
    fake: Callable[..., object]
    lead: str | None = None


@dataclass(frozen=True)
class Implementation:
    """What one backend offers for an op: its dtypes, one implementation per stage, and a per-call answer.

    ``stages`` is a mapping ``stage -> callable``, a module path (``"fastflow.kernels.coupling"``: its
    functions ``<op>_<stage>``), or :data:`EXTENSION`. ``supports(*entry_args)`` returns why the backend cannot
    run this particular call (a size limit, an option it lacks), or None.
    """

    dtypes: frozenset[torch.dtype]
    stages: Mapping[str, Callable[..., object]] | str
    supports: Callable[..., str | None] | None = None


@dataclass(frozen=True)
class Autograd:
    """The derivative of the entry stage.

    ``setup_context(ctx, inputs, output)`` saves what the backward needs (``inputs`` are the entry stage's
    arguments, without the backend); ``backward(ctx, *grads)`` returns one gradient (or None) per entry
    argument and runs the op's backward stage with ``op.call(stage, *args, backend=ctx.backend)``.
    """

    setup_context: Callable[..., None]
    backward: Callable[..., tuple]


def _dtype_names(dtypes: frozenset[torch.dtype]) -> str:
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


@dataclass
class Op:
    """A declared fused op (see the module docstring)."""

    name: str
    stages: Mapping[str, Stage]
    backends: Mapping[str, Implementation]
    autograd: Autograd | None = None
    #: ``(*entry_args) -> hashable``: the arguments that some backend's ``supports`` reads, beyond device and
    #: dtype (the selection cache is keyed by it). Required when any backend declares ``supports``.
    support_key: Callable[..., Hashable] | None = None
    custom_ops: dict[str, object] = field(init=False, default_factory=dict)
    _cache: dict[tuple, str | BackendError] = field(init=False, default_factory=dict, repr=False)
    _resolved: dict[tuple[str, str], Callable[..., object]] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"op {self.name!r} declares no stage")
        self.entry = next(iter(self.stages))
        if "reference" not in self.backends:
            raise ValueError(f"op {self.name!r}: the reference backend is required (it is the fallback)")
        for backend, implementation in self.backends.items():
            if backend not in BACKENDS:
                raise ValueError(f"op {self.name!r}: unknown backend {backend!r}; expected one of {BACKENDS}")
            if isinstance(implementation.stages, Mapping) and set(implementation.stages) != set(self.stages):
                raise ValueError(
                    f"op {self.name!r}: backend {backend!r} implements stages {sorted(implementation.stages)}, "
                    f"the op declares {sorted(self.stages)}: a backend runs every stage (a backward runs where its "
                    "forward ran)"
                )
            if implementation.supports is not None and self.support_key is None:
                raise ValueError(
                    f"op {self.name!r}: backend {backend!r} declares supports(); declare support_key too, the "
                    "arguments it reads, so that the selection can be cached"
                )
        self._arguments = {
            stage: [argument.name for argument in torch._C.parse_schema(f"x{decl.schema}").arguments]
            for stage, decl in self.stages.items()
        }
        self._lead_index = {}
        for stage, decl in self.stages.items():
            names = self._arguments[stage]
            if decl.lead is not None and decl.lead not in names:
                raise ValueError(f"op {self.name!r}, stage {stage!r}: lead {decl.lead!r} is not an argument")
            self._lead_index[stage] = names.index(decl.lead) if decl.lead is not None else None
        for stage in self.stages:
            self._define(stage)
        if self.autograd is not None:
            self._register_autograd()
        _backends.register(self)

    # ----------------------------------------------------------------------------------------------
    # Custom ops.

    def qualified_name(self, stage: str) -> str:
        return f"{self.name}_{stage}"

    def _define(self, stage: str) -> None:
        decl = self.stages[stage]
        arguments, returns = decl.schema.rsplit("->", 1)
        arguments = arguments.strip()
        if not (arguments.startswith("(") and arguments.endswith(")")):
            raise ValueError(
                f"op {self.name!r}, stage {stage!r}: a schema reads '(args) -> returns', got {decl.schema!r}"
            )
        inner = arguments[1:-1].strip()
        schema = f"({inner}{', ' if inner else ''}str backend) -> {returns.strip()}"
        is_entry = stage == self.entry

        def implementation(*args):
            *kernel_args, backend = args
            if is_entry or backend not in BACKENDS:
                backend = self.select(kernel_args, backend, stage)
            if _backends._observers:
                _backends.notify(self.name, stage, backend, tuple(kernel_args))
            return self.implementation(backend, stage)(*kernel_args)

        def fake(*args):
            return decl.fake(*args[:-1])

        implementation.__name__ = self.qualified_name(stage)
        custom_op = torch.library.custom_op(
            f"{_NAMESPACE}::{self.qualified_name(stage)}", implementation, mutates_args=(), schema=schema
        )
        custom_op.register_fake(fake)
        self.custom_ops[stage] = custom_op

    def _register_autograd(self) -> None:
        autograd = self.autograd

        def setup_context(ctx, inputs, output):
            *kernel_args, requested = inputs
            # The entry stage ran on this backend (the same cached answer): its backward will run there too.
            ctx.backend = self.select(kernel_args, requested, self.entry)
            autograd.setup_context(ctx, tuple(kernel_args), output)

        def backward(ctx, *grads):
            return (*autograd.backward(ctx, *grads), None)

        torch.library.register_autograd(
            f"{_NAMESPACE}::{self.qualified_name(self.entry)}", backward, setup_context=setup_context
        )

    def call(self, stage: str, *args, backend: str | None = None):
        """Run ``stage`` through its custom op.

        ``backend``: for the entry stage the requested one (default: the current setting, ``"auto"`` or the
        forced name); for the other stages the backend the entry stage ran on (``ctx.backend``).
        """
        if backend is None:
            backend = _backends.requested()
        return self.custom_ops[stage](*args, backend)

    # ----------------------------------------------------------------------------------------------
    # Implementations and selection.

    def implementation(self, backend: str, stage: str) -> Callable[..., object]:
        key = (backend, stage)
        found = self._resolved.get(key)
        if found is None:
            stages = self.backends[backend].stages
            if stages == EXTENSION:
                found = getattr(torch.ops.fastflow_C, self.qualified_name(stage))
            elif isinstance(stages, str):
                found = getattr(importlib.import_module(stages), self.qualified_name(stage))
            else:
                found = stages[stage]
            self._resolved[key] = found
        return found

    def _lead(self, args, stage: str) -> torch.Tensor:
        index = self._lead_index[stage]
        if index is not None:
            return args[index]
        for value in args:
            if isinstance(value, torch.Tensor):
                return value
        raise TypeError(f"op {self.name!r}, stage {stage!r}: no tensor argument to choose a backend by")

    def why_not(self, backend: str, device: torch.device, dtype: torch.dtype, args=None) -> str | None:
        """Why ``backend`` cannot run this op on ``device`` / ``dtype`` (and, given the entry arguments, this
        call), or None."""
        implementation = self.backends.get(backend)
        if implementation is None:
            return f"has no {self.name} kernel"
        if dtype not in implementation.dtypes:
            return (f"{self.name} supports {_dtype_names(implementation.dtypes)}, "
                    f"not {str(dtype).removeprefix('torch.')}")
        reason = _backends.device_reason(backend, device)
        if reason is not None:
            return reason
        if implementation.stages == EXTENSION:
            for stage in self.stages:
                reason = _backends.extension_reason(f"fastflow_C::{self.qualified_name(stage)}", backend)
                if reason is not None:
                    return reason
        if args is not None and implementation.supports is not None:
            return implementation.supports(*args)
        return None

    def select(self, args, requested: str, stage: str | None = None) -> str:
        """The backend that runs a call of ``stage`` (default: the entry) with these arguments.

        ``requested`` is ``"auto"`` or a forced backend's name. Cached per (stage, device, dtype, requested,
        ``support_key(*args)``); only the entry stage consults ``supports``.
        """
        stage = stage or self.entry
        lead = self._lead(args, stage)
        entry = stage == self.entry
        extra = self.support_key(*args) if entry and self.support_key is not None else ()
        key = (stage, lead.device, lead.dtype, requested, extra)
        found = self._cache.get(key)
        if found is None:
            found = self._choose(lead.device, lead.dtype, requested, args if entry else None)
            self._cache[key] = found
        if isinstance(found, BackendError):
            raise BackendError(str(found))
        return found

    def select_for(self, device: torch.device, dtype: torch.dtype, requested: str) -> str:
        """:meth:`select` without the call's arguments (what device and dtype alone allow)."""
        found = self._choose(device, dtype, requested, None)
        if isinstance(found, BackendError):
            raise found
        return found

    def _choose(self, device, dtype, requested: str, args) -> str | BackendError:
        if requested == "auto":
            for backend in _backends.AUTO_ORDER.get(device.type, ()):
                if self.why_not(backend, device, dtype, args) is None:
                    return backend
            return "reference"
        if self.why_not(requested, device, dtype, args) is None:
            return requested
        lines = [f"backend {requested!r} cannot run {self.name} on {device.type} {str(dtype).removeprefix('torch.')}:"]
        for backend in BACKENDS:
            lines.append(f"  {backend:9s} {self.why_not(backend, device, dtype, args) or 'available'}")
        return BackendError("\n".join(lines))
