"""MADE (Germain, Gregor, Murray & Larochelle 2015): an autoencoder masked to be autoregressive.

Masked linear layers with ReLU (:class:`~fastflow.nn.MaskedMLP`): input ``d`` has the degree ``rank(d)`` in the
model's order, each hidden unit a degree drawn from ``[min(previous degrees), D − 2]``, and the output of
dimension ``d`` sees only hidden units of degree ``< rank(d)``: its logit depends on the dimensions before it only.
An optional direct input → output connection (``direct=True``) is masked strictly autoregressive too.

Several mask sets (``num_masks > 1``, the paper's connectivity-agnostic training): mask set ``k`` is drawn from a
generator seeded by ``(seed, k)`` — its hidden degrees and, unless ``natural_ordering``, its order too (the
paper's order-agnostic training) — so a mask set is a pure function of the seed and its index, and the index is a
buffer (``mask_index``) in the ``state_dict``:

- training mode: every ``log_prob`` call (a minibatch) first moves to the next mask set, cycling through
  ``0..num_masks−1``; ``forward`` and ``sample`` use the current one;
- evaluation mode: ``log_prob`` is the ensemble ``log (1/K) Σ_k p_k(x)`` over all ``K = num_masks`` mask sets
  (a mixture, exactly normalised), and ``sample`` draws from that mixture; ``forward`` gives the current set's
  logits. The current set is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fastflow._checks import check_int, check_sizes
from fastflow.models.autoregressive import BinaryAutoregressive
from fastflow.nn import MaskedMLP

__all__ = ["MADE"]


class MADE(BinaryAutoregressive):
    """MADE on binary vectors ``[B, D]`` (see :mod:`fastflow.models.autoregressive` for the input convention).

    Args:
        dim: ``D``; hidden_sizes: widths of the hidden layers (an int for one layer; ``()`` for none).
        num_masks: mask sets cycled through in training and averaged in evaluation (1: one fixed set).
        natural_ordering: order ``0..D−1``; otherwise a random order per mask set.
        direct: a direct (masked) input → output connection.
        seed: the seed of the orders and hidden degrees.
    """

    def __init__(
        self,
        dim: int,
        hidden_sizes: int | Sequence[int] = (500,),
        *,
        num_masks: int = 1,
        natural_ordering: bool = False,
        direct: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.dim = dim = check_int("dim", dim)
        self.hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.num_masks = check_int("num_masks", num_masks)
        for name, value in (("natural_ordering", natural_ordering), ("direct", direct)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
        self.natural_ordering = natural_ordering
        self.seed = check_int("seed", seed, minimum=0)
        self.net = MaskedMLP(dim, self.hidden_sizes, direct=direct)
        # The buffer travels in the state_dict; the Python mirror is what the model reads (no device sync).
        self.register_buffer("mask_index", torch.tensor(0))
        self._mask_index = 0
        self.set_masks(0)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_sizes={self.hidden_sizes}, num_masks={self.num_masks}, "
                f"natural_ordering={self.natural_ordering}, direct={self.net.direct is not None}")

    @property
    def order(self) -> Tensor:
        """The current mask set's order: ``forward(x)[:, order[k]]`` depends on ``x[:, order[:k]]`` only."""
        return self.net.order

    @property
    def current_mask(self) -> int:
        return self._mask_index

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "mask_index"
        if key in state_dict:
            self._mask_index = int(state_dict[key])

    def set_masks(self, index: int) -> None:
        """Use mask set ``index`` (``0 <= index < num_masks``): its order and connectivity."""
        index = check_int("index", index, minimum=0)
        if index >= self.num_masks:
            raise ValueError(f"index must be below num_masks={self.num_masks}, got {index}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        order = None if self.natural_ordering else torch.randperm(self.dim, generator=generator)
        self.net.set_connectivity(order, generator)
        self.mask_index.fill_(index)
        self._mask_index = index

    def next_masks(self) -> None:
        """Move to the next mask set (cyclically); nothing with one mask set."""
        if self.num_masks > 1:
            self.set_masks((self._mask_index + 1) % self.num_masks)

    def _logits(self, x: Tensor) -> Tensor:
        return self.net.flat(x)  # one output per dimension: [B, D]

    def mask_log_prob(self, x: Tensor, index: int | None = None) -> Tensor:
        """``log p_k(x)`` ``[B]`` under mask set ``index`` alone (default: the current one), in any mode; the
        current mask set stays as it was."""
        return self._mask_log_prob(self._input(x), index)

    def _mask_log_prob(self, x: Tensor, index: int | None) -> Tensor:
        current = self._mask_index
        if index is not None and index != current:
            self.set_masks(index)
        try:
            return self._log_prob_from_logits(self._logits(x), x)
        finally:
            if self._mask_index != current:
                self.set_masks(current)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, ``[B]``: training mode the next mask set's, evaluation mode the ensemble's."""
        x = self._input(x)  # before the masks move: a refused batch leaves them as they were
        if self.num_masks == 1:
            return self._mask_log_prob(x, None)
        if self.training:
            self.next_masks()
            return self._mask_log_prob(x, None)
        per_mask = torch.stack([self._mask_log_prob(x, k) for k in range(self.num_masks)])
        return torch.logsumexp(per_mask, 0) - math.log(self.num_masks)

    def _sample(self, count: int, temperature: float) -> Tensor:
        if self.training or self.num_masks == 1:
            return super()._sample(count, temperature)
        parameter = self._reference()
        x = torch.zeros(count, self.dim, dtype=parameter.dtype, device=parameter.device)
        which = torch.randint(self.num_masks, (count,))
        current = self._mask_index
        try:
            for k in which.unique().tolist():
                rows = (which == k).nonzero().flatten().to(x.device)
                self.set_masks(k)
                x[rows] = super()._sample(rows.numel(), temperature)
        finally:
            self.set_masks(current)
        return x
