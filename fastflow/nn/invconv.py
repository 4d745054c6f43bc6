"""Glow's invertible 1×1 convolution ``y = W·x`` per pixel, ``W`` parametrised by its LU decomposition.

``W = P·L·(U + diag(s))`` with ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly
upper-triangular and ``s = sign·exp(log|s|)``: ``log|det W| = Σ log|s|`` needs no ``slogdet`` (and no host
synchronisation), the inverse needs only triangular solves, and ``W`` stays invertible by construction.
``lu=False`` keeps a plain weight (``slogdet`` and ``inverse`` on every call) for comparison.

The buffers ``perm`` and ``sign_s`` are checked (a permutation; only ``±1``) when they change — by
``load_state_dict`` or by assignment — not on every call: a training step then makes no host synchronisation.
They are valid by construction; an in-place edit of them (``layer.perm[0] = 1``) is not checked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_flow_input, check_int
from fastflow.ops.actnorm_invconv import actnorm_invconv, check_perm_and_signs
from fastflow.reference.actnorm_invconv import lu_weight
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["InvConv1x1"]


def _random_rotation(num_channels: int) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))
    return q


class InvConv1x1(nn.Module):
    """Invertible 1×1 convolution on ``[B, C, H, W]``; ``log|det J| = H·W·log|det W|`` per example.

    Initialised at a random rotation (``|det W| = 1``), as in Glow.
    """

    def __init__(self, num_channels: int, lu: bool = True):
        super().__init__()
        num_channels = check_int("num_channels", num_channels)
        self.num_channels = num_channels
        self.lu = lu
        w = _random_rotation(num_channels)
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = torch.diagonal(upper)
            # (P v)_i = v[perm[i]]
            self.register_buffer("perm", p.argmax(dim=1))
            self.register_buffer("sign_s", torch.sign(s).float())
            self.lower = nn.Parameter(torch.tril(lower, -1).float())
            self.upper = nn.Parameter(torch.triu(upper, 1).float())
            self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        else:
            self.weight = nn.Parameter(w.float())

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"

    # perm and sign_s are checked when they change, never per call (see the module docstring): the fused call
    # below passes them with check_values=False, so that no value is read.

    def _check_buffers(self, perm: object, sign_s: object, prefix: str) -> None:
        """``perm``/``sign_s`` (either ``None`` when absent) as the layer's buffers: type, shape, dtype, values."""
        shape = (self.num_channels,)
        for name, value in (("perm", perm), ("sign_s", sign_s)):
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"{prefix}{name} must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{prefix}{name} must have shape {shape} for {self.num_channels} channels, got {tuple(value.shape)}"
                )
        if perm is not None and perm.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{prefix}perm must be an integer tensor (a permutation of 0..C-1), got {perm.dtype}")
        if sign_s is not None and not sign_s.is_floating_point():
            raise TypeError(f"{prefix}sign_s must be a floating-point tensor of -1 and +1, got {sign_s.dtype}")
        check_perm_and_signs(perm, sign_s, prefix=prefix)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checked before the copy, so that a bad state_dict leaves the layer's buffers as they were.
        if self.lu:
            self._check_buffers(state_dict.get(prefix + "perm"), state_dict.get(prefix + "sign_s"), prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("perm", "sign_s") and name in self.__dict__.get("_buffers", {}) and value is not None:
            self._check_buffers(value if name == "perm" else None, value if name == "sign_s" else None, "")
        super().__setattr__(name, value)

    def matrix(self) -> Tensor:
        """The ``C×C`` matrix ``W``."""
        if self.lu:
            return lu_weight(self.lower, self.upper, self.log_s, perm=self.perm, sign_s=self.sign_s)
        return self.weight

    def _check(self, x: Tensor, name: str = "x") -> None:
        check_flow_input(name, x, self.num_channels)

    def _lu_call(
        self, x: Tensor, log_scale: Tensor | None, bias: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        return actnorm_invconv(
            x, log_scale, bias, self.lower, self.upper, self.log_s, perm=self.perm, sign_s=self.sign_s,
            inverse=inverse, check_values=False,
        )

    def _plain(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        weight = torch.linalg.inv(self.weight) if inverse else self.weight
        y = F.conv2d(x, weight.to(x.dtype)[:, :, None, None])
        dtype = accumulation_dtype(x.dtype)
        logdet = x.shape[2] * x.shape[3] * torch.linalg.slogdet(self.weight.to(dtype))[1]
        return y, (-logdet if inverse else logdet).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if not self.lu:
            return self._plain(x, inverse=False)
        # No ActNorm: None, not zeros, so that the plain reference makes no passes for an identity ActNorm.
        return self._lu_call(x, None, None, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, "y")
        if not self.lu:
            return self._plain(y, inverse=True)
        return self._lu_call(y, None, None, inverse=True)
