"""fastflow: fused kernels and models for explicit-likelihood generative models in PyTorch.

Public surface: ``nn`` (drop-in layers), ``models``, ``ops`` (functional fused ops), ``data``,
``set_backend`` / ``backend_info`` (kernel backend selection), ``load_run`` (a trained run) and ``__version__``.
Importing fastflow never probes a device and never fails because a kernel backend is missing.
"""

__version__ = "0.9.1"

from fastflow import (
    data,  # noqa: E402
    models,  # noqa: E402
    nn,  # noqa: E402
    ops,  # noqa: E402
)
from fastflow._backends import BackendError, backend_info, get_backend, set_backend  # noqa: E402


def load_run(path, *, device="cpu", weights="averaged"):
    """A trained run rebuilt from its folder or a checkpoint file: ``run.model``, ``run.sample(n, seed=...)``.

    See :func:`fastflow.train.run.load_run` (imported on first use: ``import fastflow`` stays light).
    """
    from fastflow.train.run import load_run as _load_run

    return _load_run(path, device=device, weights=weights)


__all__ = [
    "BackendError",
    "__version__",
    "backend_info",
    "data",
    "get_backend",
    "load_run",
    "models",
    "nn",
    "ops",
    "set_backend",
]
