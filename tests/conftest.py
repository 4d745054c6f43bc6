"""Test set-up: Triton runs through its interpreter when no GPU is present, GPU tests skip without one, and
``FASTFLOW_TEST_TIMEOUT=<seconds>`` fails any test that runs longer (the GPU check, ``.ci/gpu``, sets it: a hung
kernel must not eat a GPU machine's few minutes; pytest-timeout is not installed there).

``TRITON_INTERPRET`` must be set before anything imports Triton, hence here, before the tests import fastflow.
"""

import os
import signal

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _automatic_backend():
    """Every test starts from the automatic backend choice, whatever a previous test forced."""
    import fastflow

    with fastflow.set_backend(None):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    seconds = int(os.environ.get("FASTFLOW_TEST_TIMEOUT", "0") or 0)
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran longer than FASTFLOW_TEST_TIMEOUT={seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
