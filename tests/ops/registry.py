"""Registry of the fused ops for the generic op suite (``tests/ops/test_generic.py``).

An op joins the generic tests by declaring its cases in a module ``tests/ops/cases_<op>.py`` — no test code. Each
case builds the leaves (the tensors whose gradients are checked, in any layout: transposed, strided views,
empty batches) and calls the op's public function on them; the suite then checks, on every device, backend and
dtype the op declares: forward and every gradient against the float64 reference, the op's own contract
(``check``), ``opcheck`` of every custom op the call runs, ``gradcheck`` through the custom op, ``torch.compile``,
and that a backward runs on its forward's backend.
"""

from __future__ import annotations

import importlib
import pkgutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

LOW = (torch.float32, torch.float16, torch.bfloat16)
ALL_FLOATS = LOW + (torch.float64,)


@dataclass(frozen=True)
class OpCase:
    """One call of an op.

    Attributes:
        name: unique within the op, e.g. ``affine-channel-sigmoid-(3, 6, 5, 3)-flip0-inv1``.
        leaves: ``(device, dtype, generator) -> {name: tensor}``: the differentiable inputs, float, in the
            layout the call should see (made on the CPU from ``generator``, then moved).
        call: ``(**leaves) -> output or tuple of outputs``: the public function applied to (views of) the leaves.
        opcheck / compile: whether the suite runs ``opcheck`` / ``torch.compile`` on this case (they are slow:
            a few cases per op suffice).
    """

    name: str
    leaves: Callable[[torch.device, torch.dtype, torch.Generator], dict[str, torch.Tensor]]
    call: Callable[..., object]
    opcheck: bool = False
    compile: bool = False

    @property
    def seed(self) -> int:
        """A fixed seed per case (``hash()`` of a string is salted per process: a failure could not be rerun)."""
        return zlib.crc32(self.name.encode())


@dataclass(frozen=True)
class OpEntry:
    """An op under test: its declaration's name, its output names and its cases.

    Attributes:
        op: the name of the ``fastflow.ops.declaration.Op``.
        outputs: one name per output of a case's call, e.g. ``("y", "logdet")``.
        cases: the calls to test; among them at least one with an empty batch and one with non-contiguous
            inputs (the suite checks that).
        dtypes: the input dtypes to test (each backend runs those it declares).
        check: ``(outputs, leaves, dtype, backend) -> None``: assertions of the op's contract beyond the values
            (output dtypes, contiguity), run on every fast-path result.
        other_calls: calls of the op's other entry points that the generic suite does not check (values there
            are the op's own tests'), e.g. nade's sampler: ``.ci/gpu_kernels.py`` runs them with the cases, so
            that every kernel runs under compute-sanitizer.
    """

    op: str
    outputs: tuple[str, ...]
    cases: Sequence[OpCase]
    dtypes: tuple[torch.dtype, ...] = ALL_FLOATS
    check: Callable[..., None] | None = None
    other_calls: Sequence[OpCase] = ()


REGISTRY: dict[str, OpEntry] = {}


def register(entry: OpEntry) -> OpEntry:
    if entry.op in REGISTRY:
        raise ValueError(f"op {entry.op!r} is already registered for the generic tests")
    names = [case.name for case in entry.cases]
    if len(set(names)) != len(names):
        raise ValueError(f"op {entry.op!r}: case names must be unique")
    REGISTRY[entry.op] = entry
    return entry


def discover() -> dict[str, OpEntry]:
    """Import every ``tests/ops/cases_<op>.py`` (each registers its entry) and return the registry."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name.startswith("cases_"):
            importlib.import_module(f"tests.ops.{module.name}")
    return REGISTRY
