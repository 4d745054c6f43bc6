"""Reference LSTM and Elman RNN in plain PyTorch: the specification of the ``lstm_cell`` and ``lstm`` ops.

The cell (Hochreiter & Schmidhuber 1997, with a forget gate; ``torch.nn.LSTM``'s gate order ``i, f, g, o``)::

    gates = W_ih·x_t + b_ih + W_hh·h_{t−1} + b_hh                   ([B, 4H]: the two GEMMs)
    i, f, g, o = σ(gates_i), σ(gates_f), tanh(gates_g), σ(gates_o)
    c_t = f·c_{t−1} + i·g,    m_t = o·tanh(c_t),    h_t = W_hr·m_t (with a projection, ``proj_size > 0``) or m_t

and the Elman RNN, ``h_t = tanh(W_ih·x_t + b_ih + W_hh·h_{t−1} + b_hh)`` (or ReLU). Three forms live here:

- :func:`lstm_cell` / :func:`lstm_cell_backward`: the fused cell's forward and its explicit backward;
- :func:`recurrence`: one layer and one direction over a whole (possibly packed) sequence, a Python loop over
  time steps differentiated by autograd: the truth when run in float64;
- :func:`recurrence_forward` / :func:`recurrence_backward`: the algorithm of the sequence kernels in plain
  PyTorch (the ``lstm`` op's reference stages): the input projection of every step as one GEMM, the recurrence
  step by step, and a backward that walks the steps in reverse and then forms every weight gradient as one GEMM
  over all steps.

Sequences are packed as ``torch.nn.utils.rnn.PackedSequence`` packs them: ``x [N, I]`` holds step ``t``'s
``batch_sizes[t]`` rows at offset ``Σ_{s<t} batch_sizes[s]``, the batch sorted by decreasing length, so that
the sequences alive at a step are its first rows; a padded ``[T, B, I]`` input is ``batch_sizes = [B]·T``. A
state buffer ``[B, ·]`` then serves both directions: a step updates its first ``n_t`` rows, so a sequence that
has ended keeps its final state (forward) and one that has not begun keeps ``h_0`` (reverse).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "gate_count",
    "lstm_cell",
    "lstm_cell_backward",
    "offsets",
    "recurrence",
    "recurrence_backward",
    "recurrence_forward",
]

#: The recurrences of the ``lstm`` op, by their ``mode`` index.
MODES = ("lstm", "rnn_tanh", "rnn_relu")


def gate_count(mode: int) -> int:
    """Pre-activations per hidden unit: 4 for the LSTM, 1 for the RNNs."""
    return 4 if MODES[mode] == "lstm" else 1


def offsets(batch_sizes: Sequence[int]) -> list[int]:
    """Row offset of each step in the packed ``[N, ·]`` layout."""
    out, total = [], 0
    for n in batch_sizes:
        out.append(total)
        total += n
    return out


# ------------------------------------------------------------------------------------------------------
# The cell.


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(m [B, H], c_new [B, H])`` from the pre-activations ``gates [B, 4H]`` and the cell state ``c [B, H]``
    (``m = o·tanh(c_new)``: the hidden state before any projection)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def lstm_cell_backward(grad_m: Tensor, grad_c_new: Tensor, gates: Tensor, c: Tensor,
                       c_new: Tensor) -> tuple[Tensor, Tensor]:
    """``(grad_gates [B, 4H], grad_c [B, H])`` of :func:`lstm_cell` (the activations recomputed from ``gates``)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    tanh_c = torch.tanh(c_new)
    dc = grad_c_new + grad_m * o * (1 - tanh_c * tanh_c)
    grad_gates = torch.cat([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                            grad_m * tanh_c * o * (1 - o)], dim=-1)
    return grad_gates, dc * f


def _activation(mode: int, pre: Tensor) -> Tensor:
    return torch.tanh(pre) if MODES[mode] == "rnn_tanh" else F.relu(pre)


def _steps(batch_sizes: Sequence[int], reverse: bool) -> list[tuple[int, int]]:
    """``(offset, rows)`` of each step in processing order."""
    steps = list(zip(offsets(batch_sizes), batch_sizes, strict=True))
    return steps[::-1] if reverse else steps


# ------------------------------------------------------------------------------------------------------
# The specification: a loop over time steps, differentiated by autograd.


def recurrence(x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
               b_hh: Tensor | None, w_hr: Tensor | None, batch_sizes: Sequence[int], mode: int = 0,
               reverse: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction: ``(y [N, H_r], h_n [B, H_r], c_n [B, H] or None)``.

    ``x [N, I]`` packed by ``batch_sizes``; ``h0 [B, H_r]``; ``c0 [B, H]`` (LSTM) or None; ``w_ih [G·H, I]``,
    ``w_hh [G·H, H_r]``, biases ``[G·H]`` or None, ``w_hr [H_r, H]`` or None (``H_r = H`` without it).
    """
    h, c = h0, c0
    ys = [None] * len(batch_sizes)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    starts = offsets(batch_sizes)
    for t in order:
        n = batch_sizes[t]
        pre = F.linear(x[starts[t]:starts[t] + n], w_ih, b_ih) + F.linear(h[:n], w_hh, b_hh)
        if MODES[mode] == "lstm":
            m, c_rows = lstm_cell(pre, c[:n])
            h_rows = m if w_hr is None else F.linear(m, w_hr)
            c = torch.cat([c_rows, c[n:]])
        else:
            h_rows = _activation(mode, pre)
        h = torch.cat([h_rows, h[n:]])
        ys[t] = h_rows
    return torch.cat(ys), h, c


# ------------------------------------------------------------------------------------------------------
# The kernels' algorithm: the op's reference stages.


def recurrence_forward(x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                       b_hh: Tensor | None, w_hr: Tensor | None, batch_sizes: Sequence[int], mode: int,
                       reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y [N, H_r], h_n [B, H_r], c_n [B, H], gates [N, G·H], c_all [N, H])``: :func:`recurrence` plus what the
    backward needs — every step's pre-activations and (LSTM) cell state; ``c_n``, ``c_all`` empty for the RNNs."""
    lstm = MODES[mode] == "lstm"
    gates = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
    y = x.new_empty(x.shape[0], w_hh.shape[1])
    h = h0.clone()
    c = c0.clone() if lstm else x.new_empty(0)
    c_all = x.new_empty(x.shape[0], c.shape[1]) if lstm else x.new_empty(0)
    for start, n in _steps(batch_sizes, reverse):
        rows = slice(start, start + n)
        gates[rows] += h[:n] @ w_hh.T
        if lstm:
            m, c[:n] = lstm_cell(gates[rows], c[:n])
            c_all[rows] = c[:n]
            h[:n] = m if w_hr is None else m @ w_hr.T
        else:
            h[:n] = _activation(mode, gates[rows])
        y[rows] = h[:n]
    return y, h, c, gates, c_all


def _previous(batch_sizes: Sequence[int], reverse: bool) -> list[tuple[int, int, int, int]]:
    """Per step in processing order: ``(offset, rows, previous offset, rows from the previous step)``; the other
    rows of the step start from the initial state."""
    steps = _steps(batch_sizes, reverse)
    out = []
    for k, (start, n) in enumerate(steps):
        before, m = (steps[k - 1][0], min(n, steps[k - 1][1])) if k else (0, 0)
        out.append((start, n, before, m))
    return out


def recurrence_backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, x: Tensor, h0: Tensor,
                        c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, w_hr: Tensor | None, y: Tensor,
                        gates: Tensor, c_all: Tensor, batch_sizes: Sequence[int], mode: int, reverse: bool,
                        has_bias: bool) -> tuple[Tensor, ...]:
    """``(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_w_hr)`` of :func:`recurrence_forward`
    (``grad_b`` is the gradient of ``b_ih`` and of ``b_hh`` alike; empty tensors where there is no such input).

    The reverse walk carries ``dh [B, H_r]`` and ``dc [B, H]`` and keeps each step's pre-activation gradient;
    then ``grad_x``, ``grad_w_ih``, ``grad_w_hh``, ``grad_b`` (and ``grad_w_hr``) are one GEMM or sum each over
    all steps.
    """
    lstm = MODES[mode] == "lstm"
    steps = _previous(batch_sizes, reverse)
    dh = grad_h_n.clone()
    dc = grad_c_n.clone() if lstm else None
    d_gates = torch.empty_like(gates)
    d_h_total = torch.empty_like(y) if w_hr is not None else None
    m_all = torch.empty_like(c_all) if w_hr is not None else None
    h_prev = torch.empty_like(y)
    for start, n, before, m in reversed(steps):
        rows = slice(start, start + n)
        dh[:n] += grad_y[rows]
        h_prev[start:start + m] = y[before:before + m]
        h_prev[start + m:start + n] = h0[m:n]
        if lstm:
            c_prev = torch.cat([c_all[before:before + m], c0[m:n]])
            d_m = dh[:n]
            if w_hr is not None:
                d_h_total[rows] = dh[:n]
                d_m = dh[:n] @ w_hr
                o = torch.sigmoid(gates[rows].chunk(4, dim=-1)[3])
                m_all[rows] = o * torch.tanh(c_all[rows])
            d_gates[rows], dc[:n] = lstm_cell_backward(d_m, dc[:n], gates[rows], c_prev, c_all[rows])
        else:
            h = y[rows]
            d_gates[rows] = dh[:n] * ((1 - h * h) if MODES[mode] == "rnn_tanh" else (h > 0).to(h.dtype))
        dh[:n] = d_gates[rows] @ w_hh
    # Absent gradients are distinct empty tensors: a custom op's outputs may not alias one another.
    return (d_gates @ w_ih, dh, dc if lstm else x.new_empty(0), d_gates.T @ x, d_gates.T @ h_prev,
            d_gates.sum(0) if has_bias else x.new_empty(0), d_h_total.T @ m_all if w_hr is not None else x.new_empty(0))
