"""The lstm and lstm_cell ops' cases for the generic op suite.

``lstm`` (one layer-direction of a sequence): the LSTM with and without a projection, the tanh and ReLU RNNs,
padded and packed sequences of mixed lengths, both directions, without biases, an empty batch, one step, and
strided inputs (``x`` a transposed buffer, ``w_ih`` the transpose of an ``[I, G·H]`` buffer, ``h0`` a column
slice). The RNN cases return an empty ``c_n`` (an RNN has no cell state). ``lstm_cell``: the fused cell alone,
with a strided ``gates`` (a column slice) and an empty batch. Every input gets its gradient checked.
"""

from __future__ import annotations

import torch

from fastflow.ops.lstm import lstm_cell, lstm_recurrence
from fastflow.reference.lstm import MODES, gate_count
from tests.ops.registry import OpCase, OpEntry, register


def _packed(lengths: list[int]) -> list[int]:
    """``batch_sizes`` of sequences of ``lengths`` (sorted decreasing, as ``pack_sequence`` sorts them)."""
    return [sum(length > t for length in lengths) for t in range(max(lengths))]


def lstm_leaves(steps, batch, inputs, hidden, mode, proj, bias, layout, device, dtype, generator):
    """``x`` (``[T, B, I]`` when ``steps`` is an int, else packed ``[N, I]`` for ``steps`` = batch sizes), ``h0``,
    ``c0`` (LSTM), ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, ``w_hr`` (``proj > 0``), at a trained layer's scale."""
    gates, h_size = gate_count(mode) * hidden, proj or hidden
    rows = sum(steps) if isinstance(steps, list) else None
    if layout == "strided":
        x = (torch.randn(inputs, rows, generator=generator).t() if rows is not None
             else torch.randn(inputs, batch, steps, generator=generator).permute(2, 1, 0))
        w_ih = torch.randn(inputs, gates, generator=generator).t() / inputs**0.5
        h0 = torch.randn(batch, 2 * h_size, generator=generator)[:, ::2]
    else:
        x = torch.randn(rows, inputs, generator=generator) if rows is not None \
            else torch.randn(steps, batch, inputs, generator=generator)
        w_ih = torch.randn(gates, inputs, generator=generator) / inputs**0.5
        h0 = torch.randn(batch, h_size, generator=generator)
    w_hh = torch.randn(gates, h_size, generator=generator) / h_size**0.5
    tensors = {"x": x, "h0": 0.5 * h0, "w_ih": w_ih, "w_hh": w_hh}
    if MODES[mode] == "lstm":
        tensors["c0"] = torch.randn(batch, hidden, generator=generator)
    if bias:
        tensors["b_ih"] = 0.1 * torch.randn(gates, generator=generator)
        tensors["b_hh"] = 0.1 * torch.randn(gates, generator=generator)
    if proj:
        tensors["w_hr"] = torch.randn(proj, hidden, generator=generator) / hidden**0.5
    return {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}


def _lstm_case(steps, batch, inputs, hidden, mode="lstm", proj=0, bias=True, reverse=False, layout="contiguous",
               opcheck=False, compile=False) -> OpCase:
    index = MODES.index(mode)

    def leaves(device, dtype, generator):
        return lstm_leaves(steps, batch, inputs, hidden, index, proj, bias, layout, device, dtype, generator)

    def call(x, h0, w_ih, w_hh, c0=None, b_ih=None, b_hh=None, w_hr=None):
        y, h_n, c_n = lstm_recurrence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                      batch_sizes=steps if isinstance(steps, list) else None, mode=mode,
                                      reverse=reverse)
        return y, h_n, c_n if c_n is not None else h_n.new_zeros(0)

    shape = f"packed{'-'.join(map(str, steps))}" if isinstance(steps, list) else f"T{steps}xB{batch}"
    name = (f"{mode}-{shape}-I{inputs}-H{hidden}" + (f"-P{proj}" if proj else "") + ("" if bias else "-nobias")
            + ("-reverse" if reverse else "") + f"-{layout}")
    return OpCase(name, leaves, call, opcheck=opcheck, compile=compile)


def _check_lstm(outputs, leaves, dtype, backend):
    y, h_n, c_n = outputs
    assert y.dtype == h_n.dtype == dtype
    assert h_n.shape == leaves["h0"].shape
    if "c0" in leaves:
        assert c_n.shape == leaves["c0"].shape and c_n.dtype == dtype
    assert y.shape[-1] == leaves["h0"].shape[1]


register(OpEntry(
    op="lstm",
    outputs=("y", "h_n", "c_n"),
    cases=[
        _lstm_case(5, 3, 4, 6, opcheck=True, compile=True),
        _lstm_case(_packed([5, 3, 3, 1]), 4, 3, 5, reverse=True, opcheck=True),
        _lstm_case(_packed([4, 4, 2]), 3, 3, 5, proj=2),
        _lstm_case(_packed([6, 2, 1]), 3, 2, 4, proj=3, reverse=True, opcheck=True),
        _lstm_case(4, 0, 3, 5),
        _lstm_case(1, 2, 3, 4),
        _lstm_case(4, 3, 5, 4, bias=False, layout="strided"),
        _lstm_case(_packed([3, 2, 2]), 3, 4, 5, layout="strided", reverse=True),
        _lstm_case(5, 3, 4, 6, mode="rnn_tanh", opcheck=True),
        _lstm_case(_packed([5, 4, 1]), 3, 3, 5, mode="rnn_tanh", reverse=True),
        _lstm_case(_packed([4, 3, 3, 2]), 4, 3, 4, mode="rnn_relu", layout="strided", opcheck=True),
        _lstm_case(3, 2, 4, 5, mode="rnn_relu", bias=False, reverse=True),
        # Hidden sizes that are multiples of 16: the CPU kernel's fused recurrence in float32 (row and column
        # blocks with remainders, packed steps, both directions).
        _lstm_case(5, 7, 4, 16),
        _lstm_case(_packed([5, 3, 3, 1]), 4, 3, 48, reverse=True, layout="strided"),
        _lstm_case(_packed([4, 4, 3, 2]), 4, 3, 80, mode="rnn_relu", bias=False),
        _lstm_case(4, 13, 3, 16, mode="rnn_tanh", reverse=True),
    ],
    check=_check_lstm,
))


def _cell_case(batch, hidden, layout="contiguous", opcheck=False, compile=False) -> OpCase:
    def leaves(device, dtype, generator):
        gates = torch.randn(batch, 4 * hidden + (3 if layout == "strided" else 0), generator=generator)
        if layout == "strided":
            gates = gates[:, 3:]
        c = torch.randn(batch, hidden, generator=generator)
        return {"gates": gates.to(device=device, dtype=dtype), "c": c.to(device=device, dtype=dtype)}

    return OpCase(f"cell-B{batch}xH{hidden}-{layout}", leaves, lambda gates, c: lstm_cell(gates, c), opcheck=opcheck,
                  compile=compile)


def _check_cell(outputs, leaves, dtype, backend):
    m, c_new = outputs
    assert m.dtype == c_new.dtype == dtype and m.shape == c_new.shape == leaves["c"].shape


register(OpEntry(
    op="lstm_cell",
    outputs=("m", "c_new"),
    cases=[_cell_case(3, 5, opcheck=True, compile=True), _cell_case(4, 7, layout="strided", opcheck=True),
           _cell_case(0, 4), _cell_case(1, 33)],
    check=_check_cell,
))
