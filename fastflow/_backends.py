"""Kernel backends: what each one is, whether it can run a given call, and which one a call uses.

Four backends exist (after xformers' dispatcher: each answers *why not* for a call, and the
dispatcher walks a priority list):

- ``reference``: plain PyTorch (``fastflow.reference``), any device and dtype; the specification.
- ``triton``: Triton kernels (``fastflow.kernels``) on CUDA tensors, or on CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported (tests only: the interpreter is slow).
- ``cuda``: the compiled extension ``fastflow._C`` on CUDA tensors.
- ``cpu``: the compiled extension ``fastflow._C`` on CPU tensors.

Each fused op declares itself once (``fastflow.ops.declaration.Op``): per backend its dtypes, its stage
implementations and a per-call ``supports(...)``. This module holds what is common to every op: the backends'
own availability (is Triton installed, does the extension load, is the device right), the forced backend, and
the registry of declared ops that ``why_not``, ``backend_info`` and the benchmarks read.

The automatic choice takes, per call, the first backend of the device's priority list that can run the call,
else ``reference``. ``set_backend(name)`` (also a context manager) or the environment variable
``FASTFLOW_BACKEND`` forces one; a forced backend that cannot run a call raises :class:`BackendError` listing
every backend with its reason. The forced backend is a context variable: each thread (and each asyncio task)
has its own. Nothing here imports Triton, loads the extension or touches a device at import time.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fastflow.ops.declaration import Op

BACKENDS: tuple[str, ...] = ("reference", "triton", "cuda", "cpu")

# Fastest first, per device type. Triton under the interpreter is never chosen automatically.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda"),
    "cpu": ("cpu",),
}

FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class BackendError(RuntimeError):
    """A forced backend cannot run a call (the message lists every backend with its reason)."""


#: Every declared op by name (filled by ``fastflow.ops.declaration.Op``).
OPS: dict[str, Op] = {}


def register(op: Op) -> None:
    if op.name in OPS:
        raise ValueError(f"an op named {op.name!r} is already declared")
    OPS[op.name] = op


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; declared: {sorted(OPS)}") from None


# --------------------------------------------------------------------------------------------------
# Lazy loading of the compiled extension and of Triton.

_lock = threading.Lock()
_extension: object | None = None
_extension_error: str | None = None
_extension_tried = False


def load_extension() -> object | None:
    """Import ``fastflow._C`` once; return the module, or None (the reason is kept for ``why_not``)."""
    global _extension, _extension_error, _extension_tried
    with _lock:
        if not _extension_tried:
            _extension_tried = True
            try:
                _extension = importlib.import_module("fastflow._C")
            except Exception as error:  # an ImportError, or an OSError from a mismatched torch
                _extension_error = f"fastflow._C is not built or does not load ({error})"
    return _extension


def extension_has(qualified_name: str, dispatch_key: str) -> bool:
    """Whether the extension registered a ``dispatch_key`` kernel for ``fastflow_C::<name>``."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualified_name, dispatch_key)
    except RuntimeError:
        return False


def triton_interpreted() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def device_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` itself (whatever the op) cannot run on ``device``, or None."""
    if backend == "reference":
        return None
    if backend == "triton":
        missing = _triton_missing()
        if missing:
            return missing
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if triton_interpreted() else "CPU tensors need TRITON_INTERPRET=1 (set before Triton loads)"
        return f"runs on CUDA tensors, not {device.type}"
    wanted = "cpu" if backend == "cpu" else "cuda"
    if device.type != wanted:
        return f"runs on {wanted.upper()} tensors, not {device.type}"
    return None


def extension_reason(qualified_name: str, backend: str) -> str | None:
    """Why the extension cannot serve ``fastflow_C::<name>`` for the ``cpu`` / ``cuda`` backend, or None."""
    if load_extension() is None:
        return _extension_error
    key = "CPU" if backend == "cpu" else "CUDA"
    if extension_has(qualified_name, key):
        return None
    if backend == "cpu":
        return f"fastflow._C was built without the {qualified_name} CPU kernel"
    return f"fastflow._C was built without CUDA kernels ({qualified_name})"


# --------------------------------------------------------------------------------------------------
# The requested backend: a context variable, else the environment, else automatic.

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastflow_backend", default=None)
# Tests only: a forced "reference" that runs the custom ops' reference stages instead of the plain functions.
_reference_through_ops: contextvars.ContextVar[bool] = contextvars.ContextVar("fastflow_reference_ops", default=False)


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The backend requested now: the one forced by ``set_backend``, else ``$FASTFLOW_BACKEND``, else 'auto'."""
    forced = _forced.get()
    if forced is not None:
        return forced
    env = os.environ.get("FASTFLOW_BACKEND", "").strip()
    if not env:
        return "auto"
    try:
        return _check_name(env)
    except ValueError as error:
        raise ValueError(f"FASTFLOW_BACKEND: {error}") from None


def _constant_under_compile(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)``: dynamo calls ``fn`` once while tracing and keeps the result
    as a constant. Set here as the marker that function sets, because calling it imports ``torch._dynamo`` (and
    with it Triton), which ``import fastflow`` must not do."""
    fn._dynamo_marked_constant = True
    return fn


# torch.compile traces the ops with the backend requested when it compiles (a constant of the graph, so that the
# context variable costs no graph break); a compiled function keeps that choice.
@_constant_under_compile
def requested() -> str:
    """``get_backend()``, seen by ``torch.compile`` as a constant."""
    return get_backend()


@_constant_under_compile
def plain_reference() -> bool:
    """True when the public functions run the plain-PyTorch reference under autograd, bypassing the custom ops.

    That is what a forced ``reference`` means (the specification, and the benchmarks' eager baseline), except
    inside :func:`reference_through_ops`, where it runs the custom ops with their reference stages.
    """
    return get_backend() == "reference" and not _reference_through_ops.get()


@contextmanager
def reference_through_ops() -> Iterator[None]:
    """Tests: force ``reference`` through the custom ops (their reference stages), not the plain functions."""
    token = _reference_through_ops.set(True)
    try:
        with set_backend("reference"):
            yield
    finally:
        _reference_through_ops.reset(token)


class set_backend:  # noqa: N801 - used as a function and as a context manager
    """Force a backend for every op: ``fastflow.set_backend("cpu")``, or ``with fastflow.set_backend("triton"):``.

    ``None`` or ``"auto"`` returns to the automatic choice. As a context manager the previous setting is
    restored on exit. The setting belongs to the calling thread (a context variable); a backward pass runs on
    the backend its forward ran on, wherever and under whatever setting it runs.
    """

    def __init__(self, name: str | None) -> None:
        value = None if name is None or _check_name(name) == "auto" else _check_name(name)
        self._token = _forced.set(value)

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        _forced.reset(self._token)


# --------------------------------------------------------------------------------------------------
# Which backend ran: an observer for tests and for users who want to know.

_observers: list[Callable[[str, str, str, tuple], None]] = []


def notify(op: str, stage: str, backend: str, args: tuple) -> None:
    """Tell the observers that ``stage`` of ``op`` runs on ``backend`` with the kernel arguments ``args``."""
    for observer in _observers:
        observer(op, stage, backend, args)


@contextmanager
def observe(observer: Callable[[str, str, str, tuple], None]) -> Iterator[None]:
    """Call ``observer(op, stage, backend, args)`` for every stage that runs inside the block."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


@contextmanager
def trace() -> Iterator[list[tuple[str, str, str]]]:
    """Collect ``(op, stage, backend)`` for every stage that runs inside the block, in order.

    Example:
        >>> with fastflow._backends.trace() as calls:
        ...     y, logdet = fastflow.ops.affine_coupling(x, h_s, h_t)
        >>> calls  # doctest: +SKIP
        [('coupling', 'fwd', 'cpu')]
    """
    calls: list[tuple[str, str, str]] = []
    with observe(lambda op, stage, backend, args: calls.append((op, stage, backend))):
        yield calls


# --------------------------------------------------------------------------------------------------
# Why not, selection and the overview.


def why_not(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The reason ``backend`` cannot run ``op`` on tensors of this device and dtype, or None."""
    return get_op(op).why_not(backend, device, dtype)


def select(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` for tensors of this device and dtype under the current setting."""
    return get_op(op).select_for(device, dtype, requested=get_backend())


def backend_info() -> dict[str, dict[str, object]]:
    """What each backend can do on this machine, and why not where it cannot.

    Returns ``{backend: {"available": bool, "reason": str | None, "ops": [op names]}}``; ``fastflow info`` prints
    it as a table (:func:`format_backend_info`).
    """
    cuda = torch.cuda.is_available()
    probe_device = {
        "reference": torch.device("cpu"),
        "cpu": torch.device("cpu"),
        "cuda": torch.device("cuda"),
        "triton": torch.device("cuda" if cuda or not triton_interpreted() else "cpu"),
    }
    info: dict[str, dict[str, object]] = {}
    for backend in BACKENDS:
        device = probe_device[backend]
        ops, reasons = [], []
        for name in sorted(OPS):
            reason = why_not(backend, name, device, torch.float32)
            if reason is None and device.type == "cuda" and not cuda:
                reason = "no CUDA device is visible"
            if reason is None:
                ops.append(name)
            else:
                reasons.append(reason)
        info[backend] = {
            "available": bool(ops),
            "reason": None if ops else (reasons[0] if reasons else "no ops registered"),
            "ops": ops,
        }
    return info


def format_backend_info(info: dict[str, dict[str, object]] | None = None) -> str:
    """A small table of :func:`backend_info`.

    On a machine without a CUDA GPU the GPU backends (``cuda``, and ``triton`` unless its interpreter runs on the
    CPU) cannot run whatever their build, so their rows say that rather than a probe's reason, which would read
    as if a kernel were missing; with a GPU the reason is shown as it is.
    """
    info = backend_info() if info is None else info
    no_gpu = not torch.cuda.is_available()
    if no_gpu:
        built = "" if torch.version.cuda else f" (torch {torch.__version__} is built without CUDA)"
        gpu_reason = f"needs a CUDA GPU; none on this machine{built}"
    lines = [f"fastflow backends (requested: {get_backend()})"]
    for backend, row in info.items():
        if row["available"]:
            lines.append(f"  {backend:9s} available    ops: {', '.join(row['ops'])}")
            continue
        reason = row["reason"]
        if no_gpu and (backend == "cuda" or (backend == "triton" and not triton_interpreted())):
            reason = gpu_reason
        lines.append(f"  {backend:9s} unavailable  {reason}")
    return "\n".join(lines)
