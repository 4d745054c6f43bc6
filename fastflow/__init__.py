"""fastflow: fused kernels and models for explicit-likelihood generative models in PyTorch.

Public surface: ``nn`` (drop-in layers), ``models``, ``ops`` (functional fused ops), ``data``,
``set_backend`` / ``backend_info`` (kernel backend selection) and ``__version__``.
Importing fastflow never probes a device and never fails because a kernel backend is missing.
"""

__version__ = "0.4.0"

from fastflow import (
    data,  # noqa: E402
    models,  # noqa: E402
    nn,  # noqa: E402
    ops,  # noqa: E402
)
from fastflow._backends import BackendError, backend_info, get_backend, set_backend  # noqa: E402

__all__ = [
    "BackendError",
    "__version__",
    "backend_info",
    "data",
    "get_backend",
    "models",
    "nn",
    "ops",
    "set_backend",
]
