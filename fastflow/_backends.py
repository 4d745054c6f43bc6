"""Kernel backends: what each one is, whether it can run a given call, and which one a call uses.

Four backends exist (after xformers' dispatcher: each answers *why not* for a call, and the
dispatcher walks a priority list):

- ``reference``: plain PyTorch (``fastflow.reference``), any device and dtype; the specification.
- ``triton``: Triton kernels (``fastflow.kernels``) on CUDA tensors, or on CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported (tests only: the interpreter is slow).
- ``cuda``: the compiled extension ``fastflow._C`` on CUDA tensors.
- ``cpu``: the compiled extension ``fastflow._C`` on CPU tensors.

The automatic choice takes, per call, the first backend of the device's priority list that can run the
call, else ``reference``. ``set_backend(name)`` (also a context manager) or the environment variable
``FASTFLOW_BACKEND`` forces one; a forced backend that cannot run a call raises :class:`BackendError`
listing every backend with its reason. Nothing here imports Triton, loads the extension or touches a
device at import time: all of it happens on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

BACKENDS: tuple[str, ...] = ("reference", "triton", "cuda", "cpu")

# Fastest first, per device type. Triton under the interpreter is never chosen automatically.
_AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda"),
    "cpu": ("cpu",),
}

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class BackendError(RuntimeError):
    """A forced backend cannot run a call (the message lists every backend with its reason)."""


@dataclass(frozen=True)
class OpSupport:
    """Which backends implement an op, and for which dtypes."""

    name: str
    dtypes: dict[str, frozenset[torch.dtype]] = field(default_factory=dict)


_OPS: dict[str, OpSupport] = {}


def register_op(name: str, **dtypes_per_backend: Iterable[torch.dtype]) -> OpSupport:
    """Declare op ``name`` and the dtypes each backend implements (``reference`` takes every float)."""
    table = {"reference": _FLOATS}
    for backend, dtypes in dtypes_per_backend.items():
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        table[backend] = frozenset(dtypes)
    support = OpSupport(name, table)
    _OPS[name] = support
    return support


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


def _extension_has(op: str, dispatch_key: str) -> bool:
    name = f"fastflow_C::{op}_fwd"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
    except RuntimeError:
        return False


def triton_interpreted() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


# --------------------------------------------------------------------------------------------------
# Why not: one reason per backend for one call, or None when it can run it.


def why_not(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The reason ``backend`` cannot run ``op`` on tensors of this device and dtype, or None."""
    support = _OPS.get(op)
    if support is None:
        raise KeyError(f"unknown op {op!r}")
    dtypes = support.dtypes.get(backend)
    if dtypes is None:
        return f"has no {op} kernel"
    if dtype not in dtypes:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return f"{op} supports {names}, not {str(dtype).removeprefix('torch.')}"
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
    # cpu and cuda: the compiled extension
    if load_extension() is None:
        return _extension_error
    if backend == "cpu":
        if device.type != "cpu":
            return f"runs on CPU tensors, not {device.type}"
        return None if _extension_has(op, "CPU") else f"fastflow._C was built without the {op} CPU kernel"
    if device.type != "cuda":
        return f"runs on CUDA tensors, not {device.type}"
    return None if _extension_has(op, "CUDA") else f"fastflow._C was built without CUDA kernels for {op}"


# --------------------------------------------------------------------------------------------------
# Selection.

_forced: str | None = None


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The backend requested now: the one forced by ``set_backend``, else ``$FASTFLOW_BACKEND``, else 'auto'."""
    if _forced is not None:
        return _forced
    env = os.environ.get("FASTFLOW_BACKEND", "").strip()
    if not env:
        return "auto"
    try:
        return _check_name(env)
    except ValueError as error:
        raise ValueError(f"FASTFLOW_BACKEND: {error}") from None


class set_backend:  # noqa: N801 - used as a function and as a context manager
    """Force a backend for every op: ``fastflow.set_backend("cpu")``, or ``with fastflow.set_backend("triton"):``.

    ``None`` or ``"auto"`` returns to the automatic choice. As a context manager the previous setting is
    restored on exit.
    """

    def __init__(self, name: str | None) -> None:
        global _forced
        self._previous = _forced
        _forced = None if name is None or _check_name(name) == "auto" else _check_name(name)

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _forced
        _forced = self._previous


def select(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` for tensors of this device and dtype (see the module docstring)."""
    requested = get_backend()
    if requested == "auto":
        for backend in _AUTO_ORDER.get(device.type, ()):
            if why_not(backend, op, device, dtype) is None:
                return backend
        return "reference"
    reason = why_not(requested, op, device, dtype)
    if reason is None:
        return requested
    lines = [f"backend {requested!r} cannot run {op} on {device.type} {str(dtype).removeprefix('torch.')}:"]
    for backend in BACKENDS:
        lines.append(f"  {backend:9s} {why_not(backend, op, device, dtype) or 'available'}")
    raise BackendError("\n".join(lines))


def backend_info() -> dict[str, dict[str, object]]:
    """What each backend can do on this machine, and why not where it cannot.

    Returns ``{backend: {"available": bool, "reason": str | None, "ops": [op names]}}``; ``str(...)`` of the
    result is not needed: ``fastflow info`` prints it as a table (:func:`format_backend_info`).
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
        for op in sorted(_OPS):
            reason = why_not(backend, op, device, torch.float32)
            if reason is None and device.type == "cuda" and not cuda:
                reason = "no CUDA device is visible"
            if reason is None:
                ops.append(op)
            else:
                reasons.append(reason)
        info[backend] = {
            "available": bool(ops),
            "reason": None if ops else (reasons[0] if reasons else "no ops registered"),
            "ops": ops,
        }
    return info


def format_backend_info(info: dict[str, dict[str, object]] | None = None) -> str:
    """A small table of :func:`backend_info`."""
    info = backend_info() if info is None else info
    lines = [f"fastflow backends (requested: {get_backend()})"]
    for backend, row in info.items():
        if row["available"]:
            lines.append(f"  {backend:9s} available    ops: {', '.join(row['ops'])}")
        else:
            lines.append(f"  {backend:9s} unavailable  {row['reason']}")
    return "\n".join(lines)
