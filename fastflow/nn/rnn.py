"""Drop-in replacements for ``torch.nn.LSTM``, ``torch.nn.LSTMCell`` and ``torch.nn.RNN`` on fastflow's lstm ops.

Each layer subclasses its ``torch.nn`` counterpart, so that the constructor, parameter names, ``state_dict``,
``flatten_parameters()``, pickling of whole modules and the checks of ``hx`` are torch's own; only the computation
changes. The sequence layers run each layer-direction through ``fastflow.ops.lstm.lstm_recurrence`` (the input
projection of every step as one GEMM, the recurrence in one native loop, the backward's weight gradients as one
GEMM each); the cell runs its two GEMMs and then the fused cell kernel. Which backend runs is the op's answer
(``LSTM.select_for``): where that would be the plain reference (a dtype or device no kernel covers: float16 and
bfloat16 on CPUs), where the automatic choice falls on a backend not measured ahead of torch's own
(``fastflow.ops.lstm.LAYER_AUTO``: on this CPU the kernel is only level with oneDNN's LSTM, on GPUs cuDNN is
unmeasured against), and
under autocast, the layer runs torch's own implementation, which computes the same function. An empty input does
too (torch's errors or results). ``fastflow.set_backend("cpu")`` (or ``"cuda"``) runs the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastflow import _backends
from fastflow.ops.lstm import LAYER_AUTO, LSTM_CELL, lstm_cell, lstm_recurrence
from fastflow.ops.lstm import LSTM as LSTM_OP

__all__ = ["LSTM", "RNN", "LSTMCell"]


def _fused(op, x: Tensor) -> bool:
    """Whether ``op``'s kernel runs for ``x`` (else torch's own implementation does): a forced backend always (its
    error says why it cannot), the automatic choice where the op's kernel beats torch's (``LAYER_AUTO``)."""
    if x.numel() == 0 or torch.is_autocast_enabled(x.device.type):
        return False
    requested = _backends.requested()
    backend = op.select_for(x.device, x.dtype, requested)
    return backend != "reference" and (requested != "auto" or backend in LAYER_AUTO)


def _layers(module: nn.RNNBase, x: Tensor, batch_sizes: list[int], h0: Tensor, c0: Tensor | None,
            mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every layer and direction of ``module`` over ``x [N, I]`` packed by ``batch_sizes``:
    ``(y [N, D·H_r], h_n [L·D, B, H_r], c_n [L·D, B, H] or None)``."""
    directions = 2 if module.bidirectional else 1
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = "_reverse" if direction else ""
            k = layer * directions + direction

            def weight(name: str, layer: int = layer, suffix: str = suffix) -> Tensor | None:
                return getattr(module, f"{name}_l{layer}{suffix}", None)

            y, h, c = lstm_recurrence(
                x, h0[k], None if c0 is None else c0[k], weight("weight_ih"), weight("weight_hh"),
                weight("bias_ih") if module.bias else None, weight("bias_hh") if module.bias else None,
                weight("weight_hr") if getattr(module, "proj_size", 0) > 0 else None,
                batch_sizes=batch_sizes, mode=mode, reverse=bool(direction))
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outputs, dim=1) if directions == 2 else outputs[0]
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    return x, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None


def _forward(module: nn.RNNBase, input, hx, mode: str):
    """``torch.nn.LSTM`` / ``RNN``'s ``forward`` contract (packed, batch-first and unbatched inputs, default and
    permuted states, torch's checks), computed by :func:`_layers`."""
    lstm = mode == "lstm"
    name = "LSTM" if lstm else "RNN"
    directions = 2 if module.bidirectional else 1
    h_size = module.proj_size if lstm and module.proj_size > 0 else module.hidden_size
    packed = isinstance(input, PackedSequence)
    if packed:
        x, batch_sizes, sorted_indices, unsorted_indices = input
        batch, batched = int(batch_sizes[0]), True
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        batched, batch_sizes, sorted_indices, unsorted_indices = input.dim() == 3, None, None, None
        x = input if batched else input.unsqueeze(0 if module.batch_first else 1)
        batch = x.shape[0] if module.batch_first else x.shape[1]
    states = hx if lstm or hx is None else (hx,)
    if hx is not None and not packed:
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx{' and cx' if lstm else ''} should also be {want}-D but got "
                               f"({dims}) tensors")
        if not batched:
            states = tuple(s.unsqueeze(1) for s in states)
    if states is None:
        layers = module.num_layers * directions
        zeros = torch.zeros(layers, batch, h_size, dtype=x.dtype, device=x.device)
        states = (zeros, torch.zeros(layers, batch, module.hidden_size, dtype=x.dtype, device=x.device)) if lstm \
            else (zeros,)
    else:
        # Each batch row of the state belongs to the sequence the user passed in that row.
        states = tuple(module.permute_hidden(states, sorted_indices)) if lstm \
            else (module.permute_hidden(states[0], sorted_indices),)
    module.check_forward_args(x, states if lstm else states[0], batch_sizes)
    if packed:
        steps = [int(n) for n in batch_sizes]
        flat = x
    else:
        seq = x.transpose(0, 1) if module.batch_first else x  # [T, B, I]
        steps = [batch] * seq.shape[0]
        flat = seq.reshape(-1, seq.shape[2])
    y, h_n, c_n = _layers(module, flat, steps, states[0], states[1] if lstm else None, mode)
    if packed:
        output = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
    else:
        output = y.view(len(steps), batch, y.shape[1])
        if module.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(0 if module.batch_first else 1)
    hidden = (h_n, c_n) if lstm else h_n
    hidden = module.permute_hidden(hidden, unsorted_indices)
    if not batched:
        hidden = tuple(s.squeeze(1) for s in hidden) if lstm else hidden.squeeze(1)
    return output, hidden


def _data(input) -> Tensor:
    return input.data if isinstance(input, PackedSequence) else input


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` (same arguments, parameters, inputs and outputs) on fastflow's sequence op.

    Example:
        >>> lstm = LSTM(8, 16, num_layers=2, batch_first=True)
        >>> y, (h, c) = lstm(torch.randn(4, 10, 8))
        >>> y.shape, h.shape
        (torch.Size([4, 10, 16]), torch.Size([2, 4, 16]))
    """

    def forward(self, input, hx=None):
        x = _data(input)
        if not isinstance(x, Tensor) or not _fused(LSTM_OP, x):
            return super().forward(input, hx)
        return _forward(self, input, hx, "lstm")


class RNN(nn.RNN):
    """``torch.nn.RNN`` (Elman: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)``, or ReLU) on fastflow's
    sequence op."""

    def forward(self, input, hx=None):
        x = _data(input)
        if not isinstance(x, Tensor) or not _fused(LSTM_OP, x):
            return super().forward(input, hx)
        return _forward(self, input, hx, "rnn_tanh" if self.nonlinearity == "tanh" else "rnn_relu")


class LSTMCell(nn.LSTMCell):
    """``torch.nn.LSTMCell`` on fastflow's fused cell: the two GEMMs, then one kernel for the gates and state.

    Example:
        >>> cell = LSTMCell(8, 16)
        >>> h, c = cell(torch.randn(4, 8))
        >>> h.shape, c.shape
        (torch.Size([4, 16]), torch.Size([4, 16]))
    """

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(input, Tensor) or not _fused(LSTM_CELL, input):
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for index, state in enumerate(hx):
                if state.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {state.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            h, c = zeros, zeros
        else:
            h, c = (hx[0], hx[1]) if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        _check_cell(x, h, c, self.input_size, self.hidden_size)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        h_new, c_new = lstm_cell(gates, c)
        return (h_new, c_new) if batched else (h_new.squeeze(0), c_new.squeeze(0))


def _check_cell(x: Tensor, h: Tensor, c: Tensor, input_size: int, hidden_size: int) -> None:
    """The checks (and errors) of torch's cell kernels."""
    if x.shape[1] != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected {input_size}")
    for label, state in (("[0]", h), ("[1]", c)):
        if state.shape[0] != x.shape[0]:
            raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{label} batch size "
                               f"{state.shape[0]}")
        if state.shape[1] != hidden_size:
            raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {state.shape[1]}, expected "
                               f"{hidden_size}")
