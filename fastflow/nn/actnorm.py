"""ActNorm (Glow): a per-channel affine map ``y = exp(log_scale) ⊙ x + bias`` with data-dependent initialisation.

On the first training batch the parameters are set so that every channel of ``y`` has mean 0 and standard
deviation 1. Under ``torch.distributed`` the statistics are all-reduced first, so every rank starts from the
same parameters and the result equals one process seeing the whole global batch. A batch with a NaN or an
infinite value (on any rank) is refused with a ``ValueError`` and leaves the layer uninitialised: one host read
at this one-time initialisation, none afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastflow._checks import check_flow_input, check_int
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["ActNorm"]

_EPS = 1e-6


class ActNorm(nn.Module):
    """``y = exp(log_scale) ⊙ x + bias`` per channel; ``log|det J| = H·W·Σ_c log_scale_c`` per example.

    Shapes: ``x [B, C, H, W]`` (or ``[B, C]``) → ``y`` alike, ``logdet [B]``.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        num_channels = check_int("num_channels", num_channels)
        self.num_channels = num_channels
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        # The buffer travels in the state_dict; the Python mirror is what forward reads, so that checking it
        # costs no device synchronisation.
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False

    def extra_repr(self) -> str:
        return f"{self.num_channels}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "initialized"
        if key in state_dict:
            self._initialized = bool(state_dict[key])

    def mark_initialized(self) -> None:
        """Skip the data-dependent initialisation (e.g. parameters set by hand)."""
        self.initialized.fill_(True)
        self._initialized = True

    @property
    def needs_init(self) -> bool:
        return self.training and not self._initialized

    def _check(self, x: Tensor, name: str = "x") -> None:
        check_flow_input(name, x, self.num_channels, dims=(4, 2))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``log_scale``, ``bias`` so that ``y`` has per-channel mean 0 and std 1 over the (global) batch."""
        self._check(x)
        distributed = dist.is_available() and dist.is_initialized()
        if x.shape[0] == 0 and not distributed:
            raise ValueError("x: ActNorm initialises its scale and bias from the first training batch, which is empty")
        dims = [0] + list(range(2, x.dim()))
        x64 = x.detach().double()
        # Sums, not means, so that the all-reduce gives exactly the statistics of the global batch.
        stats = torch.stack([x64.sum(dims), (x64 * x64).sum(dims)])
        count = torch.tensor([x.numel() / self.num_channels], dtype=torch.float64, device=x.device)
        if distributed:
            dist.all_reduce(stats)
            dist.all_reduce(count)
        # One host read, after the all-reduce: every rank sees the same global numbers and raises alike (no
        # rank left waiting in a later collective). The parameters are set only after it passes.
        finite, total = torch.stack([torch.isfinite(stats).all().double(), count[0]]).tolist()
        if total == 0:
            raise ValueError(
                "x: ActNorm initialises its scale and bias from the first training batch, which is empty on every rank"
            )
        if not finite:
            bad = x.numel() - int(torch.isfinite(x).sum())
            where = f"{bad} of its {x.numel()} values" + ("" if not distributed else " on this rank")
            raise ValueError(
                "x: ActNorm's data-dependent initialisation needs a finite first training batch, got NaN or "
                f"infinite values ({where}); the layer stays uninitialised, and the next finite batch initialises it"
            )
        mean = stats[0] / count
        var = (stats[1] / count - mean * mean).clamp_min(0.0)
        log_scale = -0.5 * torch.log(var + _EPS)
        self.log_scale.copy_(log_scale.to(self.log_scale.dtype))
        self.bias.copy_((-mean * torch.exp(log_scale)).to(self.bias.dtype))
        self.mark_initialized()

    def _spatial(self, x: Tensor) -> int:
        return math.prod(x.shape[2:])

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        dtype = accumulation_dtype(x.dtype)
        return (sign * self._spatial(x) * self.log_scale.to(dtype).sum()).expand(x.shape[0])

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.needs_init:
            self.initialize(x)
        y = x * self._view(torch.exp(self.log_scale), x) + self._view(self.bias, x)
        return y, self._logdet(x, 1.0)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, "y")
        x = (y - self._view(self.bias, y)) * self._view(torch.exp(-self.log_scale), y)
        return x, self._logdet(y, -1.0)
