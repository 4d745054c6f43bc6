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
