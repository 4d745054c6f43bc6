"""Masked linear layers and the autoregressive networks built from them (Germain et al. 2015, MADE;
Papamakarios et al. 2017, MAF).

- :class:`MaskedLinear`: ``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` buffer.
- :func:`made_degrees` / :class:`MaskedMLP`: an MLP of masked linear layers whose output for dimension ``d``
  depends only on the dimensions before ``d`` in a given order (the MADE connectivity).
- :class:`MaskedAutoregressiveFlow`: one MAF layer, ``u = (x − μ(x)) · exp(−α(x))`` with ``μ_i`` and ``α_i``
  functions of ``x_<i`` (in the layer's order): a flow layer (``forward``/``inverse`` with log-determinants).

Degrees (0-based): input ``d`` has the degree ``rank(d)``, its position in the order; a hidden unit of degree
``m`` sees the inputs of rank ``<= m`` and feeds the outputs of rank ``> m``; a hidden layer's degrees are drawn
uniformly from ``[min(previous degrees), D − 2]``. An output of rank ``r`` thus depends on ranks ``< r`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow._checks import check_binary, check_flow_input, check_int, check_sizes
from fastflow.reference.numerics import accumulation_dtype

__all__ = ["MaskedAutoregressiveFlow", "MaskedLinear", "MaskedMLP", "check_order", "made_degrees"]


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)ᵀ + b``: an ``nn.Linear`` with a 0/1 ``mask`` buffer ``M [out_features, in_features]``.

    The ``state_dict`` holds nn.Linear's ``weight`` (and ``bias``) plus ``mask``; a plain ``nn.Linear`` state dict
    loads with ``strict=False`` (the mask stays as it is). Masked weights get a zero gradient, so they never
    change under plain gradient descent (they do not matter either way).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        mask: the initial mask (ones, i.e. a plain linear layer, by default); see :meth:`set_mask`.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mask: Tensor | None = None, device=None,
        dtype=None,
    ):
        in_features = check_int("in_features", in_features)
        out_features = check_int("out_features", out_features)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("mask", torch.ones_like(self.weight, requires_grad=False))
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: Tensor) -> None:
        """Use ``mask`` (``[out_features, in_features]``, zeros and ones: float, bool or integer).

        The buffer is replaced by a converted copy (in the weight's dtype and device), so that a graph built with
        the previous mask stays valid for its backward.
        """
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        expected = (self.out_features, self.in_features)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must be [out_features, in_features] = {list(expected)}, got {list(mask.shape)}")
        mask = check_binary("mask", mask, dtype=self.weight.dtype)
        self.mask = mask.to(self.weight.device).detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


# --------------------------------------------------------------------------------------------------
# MADE connectivity.


def check_order(name: str, order: object, dim: int) -> Tensor:
    """``order`` as an int64 permutation of ``0..dim−1`` on the CPU (``None``: the natural order)."""
    if order is None:
        return torch.arange(dim)
    if isinstance(order, Tensor):
        if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
            raise TypeError(f"{name} must be a permutation of 0..{dim - 1} (integers), got {order.dtype}")
        order = order.detach().cpu().long()
    elif isinstance(order, Sequence) and not isinstance(order, (str, bytes)):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in order):
            raise TypeError(f"{name} must be a permutation of 0..{dim - 1} (integers), got {order!r}")
        order = torch.tensor(list(order), dtype=torch.long)
    else:
        raise TypeError(f"{name} must be a permutation of 0..{dim - 1} or None, got {type(order).__name__}")
    if order.dim() != 1 or order.numel() != dim or not torch.equal(order.sort().values, torch.arange(dim)):
        raise ValueError(f"{name} must be a permutation of 0..{dim - 1}, got {order.tolist()}")
    return order


def made_degrees(
    order: Tensor, hidden_sizes: Sequence[int], generator: torch.Generator | None = None
) -> list[Tensor]:
    """MADE's degrees ``[rank of each input, degrees of hidden layer 1, …]`` (int64, CPU).

    ``rank[order[k]] = k``; hidden degrees are uniform in ``[min(previous degrees), D − 2]`` (Germain et al.), so
    every hidden unit feeds at least the last output; with ``D = 1`` (no output has inputs) they are 0.
    """
    dim = order.numel()
    rank = torch.empty(dim, dtype=torch.long)
    rank[order] = torch.arange(dim)
    degrees = [rank]
    for size in hidden_sizes:
        low = int(degrees[-1].min()) if dim > 0 else 0
        if low >= dim - 1:
            degrees.append(torch.full((size,), max(low, 0), dtype=torch.long))
        else:
            degrees.append(torch.randint(low, dim - 1, (size,), generator=generator))
    return degrees


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor on ``device`` with no host synchronisation (a pinned, asynchronous copy to a GPU):
    MADE draws a new connectivity every training step."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class MaskedMLP(nn.Module):
    """MADE's network: masked linear layers with ReLU between them, ``x [..., D] → [..., outputs_per_dim, D]``, where
    every output of dimension ``d`` depends only on the dimensions before ``d`` in :attr:`order`.

    Args:
        dim: ``D``. hidden_sizes: widths of the hidden layers (``()``: one masked layer, a linear model).
        outputs_per_dim: outputs per dimension (1 for Bernoulli logits, 2 for a Gaussian's ``μ`` and ``α``).
        direct: add a direct input → output connection, itself masked strictly autoregressive.
        order: the initial order (a permutation; ``None``: natural), seed: the seed of the hidden degrees.
            :meth:`set_connectivity` draws another order/connectivity.
    """

    def __init__(
        self,
        dim: int,
        hidden_sizes: Sequence[int] = (500,),
        *,
        outputs_per_dim: int = 1,
        direct: bool = False,
        order: Sequence[int] | Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.dim = dim = check_int("dim", dim)
        self.hidden_sizes = hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.outputs_per_dim = check_int("outputs_per_dim", outputs_per_dim)
        if not isinstance(direct, bool):
            raise TypeError(f"direct must be a bool, got {type(direct).__name__} {direct!r}")
        seed = check_int("seed", seed, minimum=0)
        widths = (dim, *hidden_sizes, dim * self.outputs_per_dim)
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.direct = MaskedLinear(dim, dim * self.outputs_per_dim, bias=False) if direct else None
        self.register_buffer("order", torch.arange(dim))
        self.set_connectivity(order, torch.Generator().manual_seed(seed))

    def set_connectivity(self, order: Sequence[int] | Tensor | None, generator: torch.Generator | None = None) -> None:
        """Rebuild every mask for ``order`` (``None``: natural) with hidden degrees drawn from ``generator``."""
        order = check_order("order", order, self.dim)
        degrees = made_degrees(order, self.hidden_sizes, generator)
        device = self.layers[0].weight.device
        degrees = [_to_device(d, device) for d in degrees]
        rank = degrees[0].repeat(self.outputs_per_dim)  # output p·D + d belongs to dimension d
        for layer, before, after in zip(self.layers[:-1], degrees[:-1], degrees[1:], strict=True):
            layer.set_mask(after[:, None] >= before[None, :])
        self.layers[-1].set_mask(rank[:, None] > degrees[-1][None, :])
        if self.direct is not None:
            self.direct.set_mask(rank[:, None] > degrees[0][None, :])
        self.order = _to_device(order, device)

    def flat(self, x: Tensor) -> Tensor:
        """The outputs as ``[..., outputs_per_dim·D]`` (output ``p·D + d`` is dimension ``d``'s ``p``-th): with one
        output per dimension, the logits themselves, with no view to build and differentiate through."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        if self.direct is not None:
            h = h + self.direct(x)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.flat(x).unflatten(-1, (self.outputs_per_dim, self.dim))


# --------------------------------------------------------------------------------------------------
# The MAF layer.


class MaskedAutoregressiveFlow(nn.Module):
    """One MAF layer (Papamakarios et al. 2017) on ``[B, D]``: ``u_i = (x_i − μ_i(x_<i)) · exp(−α_i(x_<i))``.

    ``μ`` and ``α`` come from one :class:`MaskedMLP` (``x_<i``: the dimensions before ``i`` in :attr:`order`).
    ``forward`` (data → noise) is one pass, ``log|det ∂u/∂x| = −Σ_i α_i``; ``inverse`` (noise → data) takes ``D``
    passes, each making one more dimension exact. The network's last layer starts at zero: the layer starts as
    the identity. ``cond`` is not supported (an unconditional layer; passing one is an error).

    Args:
        dim: ``D``; hidden_sizes: the MADE's hidden widths; order: the layer's order (``None``: natural);
        seed: the seed of the hidden degrees.
    """

    def __init__(
        self,
        dim: int,
        hidden_sizes: Sequence[int] = (512,),
        *,
        order: Sequence[int] | Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.dim = check_int("dim", dim)
        self.net = MaskedMLP(self.dim, hidden_sizes, outputs_per_dim=2, order=order, seed=seed)
        last = self.net.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def order(self) -> Tensor:
        return self.net.order

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_sizes={self.net.hidden_sizes}"

    def _check(self, name: str, x: object, cond: object) -> Tensor:
        if cond is not None:
            raise ValueError("cond must be None: MaskedAutoregressiveFlow is unconditional")
        return check_flow_input(name, x, self.dim, dims=(2,))

    def shift_and_log_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, α)``, each ``[B, D]``, of the conditionals at ``x``."""
        out = self.net(x)
        return out[..., 0, :], out[..., 1, :]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._check("x", x, cond)
        mu, alpha = self.shift_and_log_scale(x)
        u = (x - mu) * torch.exp(-alpha)
        return u, -alpha.to(accumulation_dtype(alpha.dtype)).sum(1)

    def inverse(self, u: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = self._check("u", u, cond)
        x = torch.zeros_like(u)
        alpha = torch.zeros_like(u)
        # After pass k the first k dimensions in the order are exact; the last pass's α (a function of the
        # dimensions before each one, all exact by then) is α at the final x.
        for _ in range(max(self.dim, 1)):
            mu, alpha = self.shift_and_log_scale(x)
            x = u * torch.exp(alpha) + mu
        return x, alpha.to(accumulation_dtype(alpha.dtype)).sum(1)
