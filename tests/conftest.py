"""Test set-up: Triton runs through its interpreter when no GPU is present, GPU tests skip without one.

``TRITON_INTERPRET`` must be set before anything imports Triton, hence here, before the tests import fastflow.
"""

import os

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
