"""Backend selection: automatic choice, set_backend (function and context manager), FASTFLOW_BACKEND,
the error of a forced backend that cannot run, backend_info, and an import that probes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.ops import affine_coupling


def test_set_backend_as_context_manager_restores():
    assert fastflow.get_backend() == "auto"
    with fastflow.set_backend("reference"):
        assert fastflow.get_backend() == "reference"
        with fastflow.set_backend("auto"):
            assert fastflow.get_backend() == "auto"
        assert fastflow.get_backend() == "reference"
    assert fastflow.get_backend() == "auto"


def test_set_backend_as_function():
    fastflow.set_backend("reference")
    try:
        assert fastflow.get_backend() == "reference"
    finally:
        fastflow.set_backend(None)
    assert fastflow.get_backend() == "auto"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastflow.set_backend("opencl")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTFLOW_BACKEND", "reference")
    assert fastflow.get_backend() == "reference"
    assert _backends.select("coupling", torch.device("cpu"), torch.float32) == "reference"
    monkeypatch.setenv("FASTFLOW_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTFLOW_BACKEND"):
        fastflow.get_backend()
    with fastflow.set_backend("reference"):  # an explicit choice wins over the environment
        assert fastflow.get_backend() == "reference"


def test_automatic_choice_prefers_the_extension_on_cpu():
    choice = _backends.select("coupling", torch.device("cpu"), torch.float32)
    if _backends.why_not("cpu", "coupling", torch.device("cpu"), torch.float32) is None:
        assert choice == "cpu"
    else:
        assert choice == "reference"
    # Triton under the interpreter is for tests only, never an automatic choice.
    assert choice != "triton"


def test_forced_backend_that_cannot_run_lists_every_reason():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    h = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with fastflow.set_backend("triton"), pytest.raises(fastflow.BackendError) as error:
        affine_coupling(x, h[:, 1::2], h[:, 0::2])
    message = str(error.value)
    assert "backend 'triton' cannot run coupling on cpu float64" in message
    for backend in _backends.BACKENDS:
        assert f"  {backend} " in message
    assert "not float64" in message


def test_backend_info_lists_every_backend():
    info = fastflow.backend_info()
    assert list(info) == list(_backends.BACKENDS)
    assert info["reference"]["available"] and "coupling" in info["reference"]["ops"]
    for row in info.values():
        assert row["available"] or row["reason"]
    table = _backends.format_backend_info(info)
    assert "reference" in table and "available" in table


def test_import_probes_nothing():
    """``import fastflow`` imports neither Triton nor the extension, and initialises no CUDA context."""
    code = (
        "import sys, torch, fastflow\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'fastflow._C' not in sys.modules, 'extension loaded'\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# The op declarations: C++ schemas, the selection cache, the forced backend per thread, the backward's backend.


def test_cpp_schemas_equal_the_python_declarations():
    """Every stage that a backend takes from ``fastflow._C`` has the schema the Python declaration states, and every
    public op of ``fastflow._C`` is declared."""
    from fastflow.ops.declaration import EXTENSION

    if _backends.load_extension() is None:
        pytest.skip("fastflow._C is not built")
    declared = set()
    for op in _backends.OPS.values():
        if not any(impl.stages == EXTENSION for impl in op.backends.values()):
            continue
        for stage, decl in op.stages.items():
            name = op.qualified_name(stage)
            declared.add(name)
            expected = torch._C.parse_schema(f"fastflow_C::{name}{decl.schema}")
            found = getattr(torch.ops.fastflow_C, name).default._schema
            assert str(found) == str(expected), f"{name}: C++ {found} != Python {expected}"
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fastflow_C::")}
    public = {name for name in registered if not name.startswith("_")}
    assert public == declared, f"declared in C++ only: {sorted(public - declared)}"


def test_selection_is_cached_per_device_dtype_request_and_support_key(monkeypatch):
    """An op called once per time step pays no repeated probing: the second call asks no backend anything."""
    op = _backends.get_op("coupling")
    monkeypatch.setattr(op, "_cache", {})  # what earlier tests cached (a float64 call) must not answer for this one
    x = torch.randn(2, 4, 3, 3)
    h = torch.randn(2, 4, 3, 3)
    affine_coupling(x, h[:, 1::2], h[:, 0::2])
    probes = []
    original = type(op).why_not

    def counting(self, *args, **kwargs):
        probes.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(op), "why_not", counting)
    for _ in range(3):
        affine_coupling(x, h[:, 1::2], h[:, 0::2])
    assert probes == []
    affine_coupling(x.double(), h.double()[:, 1::2], h.double()[:, 0::2])  # a new dtype: one probe round
    assert probes


def test_forced_backend_is_per_thread():
    """``set_backend`` in one thread does not change what another thread runs (a context variable)."""
    import threading

    seen = {}
    forced = threading.Event()
    checked = threading.Event()

    def other_thread():
        forced.wait(timeout=10)
        seen["other"] = fastflow.get_backend()
        checked.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with fastflow.set_backend("reference"):
        forced.set()
        checked.wait(timeout=10)
        seen["main"] = fastflow.get_backend()
    thread.join()
    assert seen == {"main": "reference", "other": "auto"}


def test_backward_outside_the_forced_block_runs_on_the_forwards_backend():
    """The coupling's forward forced to the reference stages, its backward after the block: the reference again
    (the automatic choice there would be the cpu kernel); and the other way round."""
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    h = torch.randn(2, 4, 3, 3, requires_grad=True)
    with _backends.reference_through_ops():
        y, logdet = affine_coupling(x, h[:, 1::2], h[:, 0::2])
    with _backends.trace() as calls:
        (y.sum() + logdet.sum()).backward()
    assert calls == [("coupling", "bwd", "reference")]
    y, logdet = affine_coupling(x, h[:, 1::2], h[:, 0::2])
    automatic = _backends.get_op("coupling").select_for(x.device, x.dtype, "auto")
    with _backends.reference_through_ops(), _backends.trace() as calls:
        (y.sum() + logdet.sum()).backward()
    assert calls == [("coupling", "bwd", automatic)]


def test_a_backend_must_implement_every_stage():
    from fastflow.ops.declaration import FLOATS, Implementation, Op, Stage

    def fake(x):
        return torch.empty_like(x)

    with pytest.raises(ValueError, match="implements stages"):
        Op(
            "broken_op",
            stages={"fwd": Stage("(Tensor x) -> Tensor", fake), "bwd": Stage("(Tensor x) -> Tensor", fake)},
            backends={"reference": Implementation(FLOATS, {"fwd": fake})},
        )
    assert "broken_op" not in _backends.OPS
