"""The generic op suite: every op of ``tests/ops/registry.py`` on every device, backend and dtype it declares.

- forward and every gradient against the float64 reference (the plain-PyTorch functions of ``fastflow.reference``
  run in float64): the error at most twice the reference's own error in the same precision, plus a floor that
  follows each output's own dtype (``tests/numerics.py``); the forced backend is the one that ran, forward and
  backward; the op's own contract (``OpEntry.check``);
- ``opcheck`` of every custom op a call runs (forward and backward stages) on every backend;
- ``gradcheck`` through the custom op (not around it), in float64, on every backend that takes float64;
- ``torch.compile(fullgraph=True)`` equals eager, forward and gradients;
- a backward runs on its forward's backend, whatever is forced when it runs;
- every op declares an empty batch and non-contiguous inputs among its cases.

The ``reference`` backend here is the custom ops' reference stages (the automatic fallback), reached through
``fastflow._backends.reference_through_ops``; the truth is the plain reference, as a forced ``reference`` runs it.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from fastflow import _backends
from tests.numerics import assert_close_to_reference
from tests.ops.registry import OpCase, OpEntry, discover

REGISTRY = discover()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Full gradcheck up to this many input elements; a fast-mode gradcheck (a random projection) beyond.
FULL_GRADCHECK_ELEMENTS = 160


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _wrong_device(backend: str, device: str) -> bool:
    """A backend that never runs on this device type (no test item at all, rather than a skip per case)."""
    return backend in ("cpu",) and device != "cpu" or backend == "cuda" and device != "cuda"


def _params(select) -> list:
    """``pytest.param``s of ``select(entry, op, case) -> ((values...), (id parts...))``; those on CUDA tensors are
    marked ``gpu`` (``pytest -m gpu`` is the GPU check's selection)."""
    params = []
    for entry in REGISTRY.values():
        op = _backends.get_op(entry.op)
        for case in entry.cases:
            for rest, ids in select(entry, op, case):
                marks = [pytest.mark.gpu] if "cuda" in rest[:1] else []
                params.append(pytest.param(entry, case, *rest, marks=marks,
                                           id=f"{entry.op}-{case.name}-{'-'.join(map(str, ids))}"))
    return params


def _backend_grid(entry: OpEntry, op, case: OpCase, dtypes=None):
    for device in DEVICES:
        for backend, implementation in op.backends.items():
            if _wrong_device(backend, device):
                continue
            for dtype in dtypes or entry.dtypes:
                if dtype in implementation.dtypes:
                    yield (device, backend, dtype), (device, backend, _dtype_id(dtype))


# --------------------------------------------------------------------------------------------------
# Running a case.


def _generator(case: OpCase, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(case.seed + salt)


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def _cotangents(case: OpCase, outputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Fixed random cotangents in the outputs' own dtypes: the float64 truth then gets the very same numbers
    (a float64 cotangent would differ from its low-precision rounding, an error no kernel makes)."""
    generator = _generator(case, 1)
    return [torch.randn(out.shape, generator=generator).to(device=out.device, dtype=out.dtype) for out in outputs]


def _run(case: OpCase, leaves: dict[str, torch.Tensor], cotangents=None):
    """``(outputs, {leaf: gradient})`` of the case; cotangents default to fixed random ones."""
    leaves = {name: t.detach().requires_grad_(True) for name, t in leaves.items()}
    outputs = _as_tuple(case.call(**leaves))
    if cotangents is None:
        cotangents = _cotangents(case, outputs)
    # An output outside the graph (the additive coupling's constant log-determinant) has no gradient to pass.
    pairs = [(out, g.to(out.dtype)) for out, g in zip(outputs, cotangents, strict=True) if out.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()), [g for _, g in pairs],
                                allow_unused=True) if pairs else [None] * len(leaves)
    named = {name: torch.zeros_like(t) if g is None else g for (name, t), g in zip(leaves.items(), grads, strict=True)}
    return outputs, named


def _forcing(backend: str):
    return _backends.reference_through_ops() if backend == "reference" else _backends.set_backend(backend)


def _record(case: OpCase, leaves: dict[str, torch.Tensor], backend: str):
    """The custom-op calls ``(op, stage, backend, args)`` of one forward and backward of the case."""
    calls = []

    def observer(op, stage, ran_on, args):
        calls.append((op, stage, ran_on, tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a
                                               for a in args)))

    with _forcing(backend), _backends.observe(observer):
        _run(case, leaves)
    return calls


def _skip_unless_runs(entry: OpEntry, case: OpCase, leaves, device: str, backend: str, dtype: torch.dtype):
    """Skip with the backend's own reason when it cannot run this call (its device, a library, ``supports``)."""
    op = _backends.get_op(entry.op)
    reason = op.why_not(backend, torch.device(device), dtype)
    if reason is None and op.backends[backend].supports is not None:
        calls = _record(case, leaves, "reference")
        args = next(args for name, stage, _, args in calls if name == entry.op and stage == op.entry)
        reason = op.why_not(backend, torch.device(device), dtype, args)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


# --------------------------------------------------------------------------------------------------
# The tests.


@pytest.mark.parametrize(("entry", "case", "device", "backend", "dtype"), _params(_backend_grid))
def test_matches_float64_reference(entry: OpEntry, case: OpCase, device, backend, dtype):
    leaves = case.leaves(torch.device(device), dtype, _generator(case))
    _skip_unless_runs(entry, case, leaves, device, backend, dtype)
    with _backends.set_backend("reference"):
        low = _run(case, leaves)
        cotangents = _cotangents(case, low[0])
        low = _run(case, leaves, cotangents)
        truth = _run(case, {name: t.double() for name, t in leaves.items()}, cotangents)
    with _forcing(backend), _backends.trace() as calls:
        fast = _run(case, leaves, cotangents)
    ran = {(stage, ran_on) for op, stage, ran_on in calls if op == entry.op}
    assert ran and all(ran_on == backend for _, ran_on in ran), f"forced {backend}, ran {sorted(ran)}"
    if entry.check is not None:
        entry.check(fast[0], leaves, dtype, backend)
    for name, value, value_low, value64 in zip(entry.outputs, fast[0], low[0], truth[0], strict=True):
        assert_close_to_reference(name, value, value_low, value64, value.dtype)
    for name, value in fast[1].items():
        assert value.dtype == leaves[name].dtype and value.shape == leaves[name].shape, name
        assert_close_to_reference(f"grad_{name}", value, low[1][name], truth[1][name], value.dtype)


def _flagged(flag: str):
    def select(entry, op, case):
        if not getattr(case, flag):
            return
        for device in DEVICES:
            for backend in op.backends:
                if not _wrong_device(backend, device):
                    yield (device, backend), (device, backend)
    return select


@pytest.mark.parametrize(("entry", "case", "device", "backend"), _params(_flagged("opcheck")))
def test_opcheck_every_custom_op_of_a_call(entry: OpEntry, case: OpCase, device, backend):
    leaves = case.leaves(torch.device(device), torch.float32, _generator(case))
    _skip_unless_runs(entry, case, leaves, device, backend, torch.float32)
    calls = _record(case, leaves, backend)
    op = _backends.get_op(entry.op)
    stages = {stage for name, stage, _, _ in calls if name == entry.op}
    assert op.entry in stages, f"the call ran {sorted(stages)}"
    for name, stage, ran_on, args in calls:
        if name == entry.op:
            torch.library.opcheck(op.custom_ops[stage], (*args, ran_on))


def _float64_backends(entry, op, case):
    for device in DEVICES:
        # On a GPU only the opcheck cases: a numerical Jacobian there is thousands of tiny launches per case, and
        # no GPU kernel takes float64 (only the reference stages do, which the CPU already gradchecks everywhere).
        if device == "cuda" and not case.opcheck:
            continue
        for backend, implementation in op.backends.items():
            if torch.float64 in implementation.dtypes and not _wrong_device(backend, device):
                yield (device, backend), (device, backend)


@pytest.mark.parametrize(("entry", "case", "device", "backend"), _params(_float64_backends))
def test_gradcheck_through_the_custom_op(entry: OpEntry, case: OpCase, device, backend):
    leaves = case.leaves(torch.device(device), torch.float64, _generator(case))
    if any(t.numel() == 0 for t in leaves.values()):
        pytest.skip("an empty input has no Jacobian to check")
    _skip_unless_runs(entry, case, leaves, device, backend, torch.float64)
    op = _backends.get_op(entry.op)
    calls = _record(case, leaves, backend)
    for name, stage, ran_on, args in calls:
        if name != entry.op or stage != op.entry:
            continue
        positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        inputs = tuple(args[i].detach().clone().requires_grad_(True) for i in positions)

        def through_op(*tensors, args=args, positions=positions, ran_on=ran_on):
            full = list(args)
            for i, t in zip(positions, tensors, strict=True):
                full[i] = t
            return op.call(op.entry, *full, backend=ran_on)

        elements = sum(t.numel() for t in inputs)
        assert torch.autograd.gradcheck(through_op, inputs, fast_mode=elements > FULL_GRADCHECK_ELEMENTS)


def _compile_cases(entry, op, case):
    if case.compile:
        for device in DEVICES:
            yield (device,), (device,)


@pytest.mark.parametrize(("entry", "case", "device"), _params(_compile_cases))
def test_torch_compile_matches_eager(entry: OpEntry, case: OpCase, device):
    """``torch.compile(fullgraph=True)`` of a call through fastflow's custom ops: no graph break, same numbers."""
    leaves = case.leaves(torch.device(device), torch.float32, _generator(case))
    eager = _run(case, leaves)
    compiled_case = OpCase(case.name, case.leaves, torch.compile(case.call, fullgraph=True, backend="aot_eager"))
    compiled = _run(compiled_case, leaves)
    for a, b in zip(compiled[0], eager[0], strict=True):
        torch.testing.assert_close(a, b)
    for name in eager[1]:
        torch.testing.assert_close(compiled[1][name], eager[1][name])


def _first_opcheck_case(entry: OpEntry) -> OpCase:
    return next(case for case in entry.cases if case.opcheck)


@pytest.mark.parametrize("entry", list(REGISTRY.values()), ids=list(REGISTRY))
def test_backward_runs_on_the_forwards_backend(entry: OpEntry):
    """Forward under one forced backend, backward outside the block (or under another): the backward runs where
    the forward ran."""
    op = _backends.get_op(entry.op)
    case = _first_opcheck_case(entry)
    leaves = case.leaves(torch.device("cpu"), torch.float32, _generator(case))
    runnable = [b for b in op.backends if op.why_not(b, torch.device("cpu"), torch.float32) is None]
    assert "reference" in runnable
    for forward_backend in runnable:
        others = [b for b in runnable if b != forward_backend]
        leaves_grad = {name: t.detach().requires_grad_(True) for name, t in leaves.items()}
        with _forcing(forward_backend):
            outputs = [o for o in _as_tuple(case.call(**leaves_grad)) if o.requires_grad]
        with _forcing(others[0]) if others else _backends.set_backend(None), _backends.trace() as calls:
            torch.autograd.grad([o.sum() for o in outputs], list(leaves_grad.values()), allow_unused=True)
        backward = [ran_on for name, stage, ran_on in calls if name == entry.op]
        assert backward and set(backward) == {forward_backend}, (forward_backend, calls)


@pytest.mark.parametrize("entry", list(REGISTRY.values()), ids=list(REGISTRY))
def test_cases_include_an_empty_batch_and_non_contiguous_inputs(entry: OpEntry):
    empty = non_contiguous = False
    for case in entry.cases:
        leaves = case.leaves(torch.device("cpu"), torch.float32, _generator(case))
        empty |= any(t.numel() == 0 for t in leaves.values())
        non_contiguous |= any(not t.is_contiguous() for t in leaves.values())
    assert empty and non_contiguous, f"{entry.op}: empty batch {empty}, non-contiguous {non_contiguous}"
    assert any(case.opcheck for case in entry.cases) and any(case.compile for case in entry.cases)


def test_every_declared_op_is_in_the_registry():
    """An op that is declared but has no test cases is untested: the registry must name every one."""
    assert set(_backends.OPS) == set(REGISTRY), (sorted(_backends.OPS), sorted(REGISTRY))


def test_seeds_are_fixed_numbers():
    """A case's seed is a function of its name alone, the same in every process (``hash()`` of a string is salted
    per process, so a failure seeded by it could not be rerun): CRC-32 of the name."""
    case = OpCase("affine-channel", lambda *_: {}, lambda: None)
    assert case.seed == 0x06B5A5D8 == zlib.crc32(b"affine-channel")
    assert len({case.seed for entry in REGISTRY.values() for case in entry.cases}) > 1
