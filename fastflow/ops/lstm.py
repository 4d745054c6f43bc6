"""The ``lstm_cell`` and ``lstm`` ops: the fused LSTM cell, and one layer-direction of a whole LSTM / RNN sequence.

Math: ``fastflow.reference.lstm``. Two declarations (two stage sets, each a forward and its backward):

- ``lstm_cell_fwd(gates [B, 4H], c [B, H]) -> (m [B, H], c_new [B, H])``: after the two GEMMs
  (``gates = x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh``) one pass computes ``i, f, g, o``, ``c_new = f·c + i·g`` and
  ``m = o·tanh(c_new)``; ``lstm_cell_bwd(grad_m, grad_c_new, gates, c, c_new) -> (grad_gates, grad_c)``
  recomputes the activations from ``gates`` (nothing else is saved).
- ``lstm_fwd(x [N, I], h0 [B, H_r], c0 [B, H]?, w_ih [G·H, I], w_hh [G·H, H_r], b_ih?, b_hh?, w_hr [H_r, H]?,
  int[] batch_sizes, int mode, bool reverse) -> (y [N, H_r], h_n [B, H_r], c_n [B, H], gates [N, G·H],
  c_all [N, H])``: ``mode`` 0 is the LSTM (``G = 4``), 1 the tanh RNN and 2 the ReLU RNN (``G = 1``; ``c0``,
  ``w_hr`` None, ``c_n`` and ``c_all`` empty); ``x`` is packed by ``batch_sizes`` (``PackedSequence``'s layout;
  a padded ``[T, B, I]`` input is ``[T·B, I]`` with ``batch_sizes = [B]·T``); ``reverse`` runs the steps from
  the last. ``gates`` (every step's pre-activations) and ``c_all`` (every step's cell state) are what the backward
  needs, returned so that autograd saves them. ``lstm_bwd(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh,
  w_hr, y, gates, c_all, batch_sizes, mode, reverse, has_bias) -> (grad_x, grad_h0, grad_c0, grad_w_ih,
  grad_w_hh, grad_b, grad_w_hr)``: one reverse walk over the steps, then each weight gradient as one GEMM over
  all steps; ``grad_b`` serves ``b_ih`` and ``b_hh`` alike.

Backends: ``reference`` (``fastflow.reference.lstm``, any device and float dtype), ``cpu`` (the compiled
extension: float32 and float64; in float32 on AVX-512 CPUs with ``H`` a multiple of 16 and no projection, the
recurrence of ``csrc/cpu/lstm_fused.cpp``, tiled and multithreaded, else the loop) and ``cuda`` (the compiled
extension: every float dtype; the same host loop, ``csrc/lstm_loop.h``, with CUDA pointwise kernels). Which
backend runs a call is the op's answer (``LSTM.select_for``); the layers of ``fastflow.nn.rnn`` ask it, and run
torch's own implementation where the answer is the reference or, with the automatic choice, a backend outside
:data:`LAYER_AUTO`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastflow import _backends
from fastflow._checks import check_floating
from fastflow.ops.declaration import EXTENSION, FLOATS, Autograd, Implementation, Op, Stage
from fastflow.reference import lstm as reference
from fastflow.reference.lstm import MODES

__all__ = ["LAYER_AUTO", "LSTM", "LSTM_CELL", "MODES", "lstm_cell", "lstm_recurrence"]

_CPU = frozenset({torch.float32, torch.float64})


# --------------------------------------------------------------------------------------------------
# The fused cell.


# Fakes: contiguous outputs (new_empty), as the kernels return them whatever the inputs' strides.


def _fake_cell_fwd(gates, c):
    return c.new_empty(c.shape), c.new_empty(c.shape)


def _fake_cell_bwd(grad_m, grad_c_new, gates, c, c_new):
    return gates.new_empty(gates.shape), c.new_empty(c.shape)


def _cell_setup_context(ctx, inputs, output):
    gates, c = inputs
    ctx.save_for_backward(gates, c, output[1])


def _cell_backward(ctx, grad_m, grad_c_new):
    gates, c, c_new = ctx.saved_tensors
    grad_m = torch.zeros_like(c_new) if grad_m is None else grad_m
    grad_c_new = torch.zeros_like(c_new) if grad_c_new is None else grad_c_new
    return LSTM_CELL.call("bwd", grad_m, grad_c_new, gates, c, c_new, backend=ctx.backend)


LSTM_CELL = Op(
    "lstm_cell",
    stages={
        "fwd": Stage("(Tensor gates, Tensor c) -> (Tensor, Tensor)", fake=_fake_cell_fwd, lead="gates"),
        "bwd": Stage("(Tensor grad_m, Tensor grad_c_new, Tensor gates, Tensor c, Tensor c_new) -> (Tensor, Tensor)",
                     fake=_fake_cell_bwd, lead="gates"),
    },
    backends={
        "reference": Implementation(FLOATS, {"fwd": reference.lstm_cell, "bwd": reference.lstm_cell_backward}),
        "cpu": Implementation(_CPU, EXTENSION),
        "cuda": Implementation(FLOATS, EXTENSION),
    },
    autograd=Autograd(_cell_setup_context, _cell_backward),
)


# --------------------------------------------------------------------------------------------------
# One layer-direction of a sequence.


def _fake_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse):
    rows, hidden = x.shape[0], w_hh.shape[0] // reference.gate_count(mode)
    lstm = MODES[mode] == "lstm"
    return (x.new_empty(rows, h0.shape[1]), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape) if lstm else x.new_empty(0), x.new_empty(rows, w_hh.shape[0]),
            x.new_empty(rows, hidden) if lstm else x.new_empty(0))


def _fake_bwd(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all, batch_sizes, mode, reverse,
              has_bias):
    lstm = MODES[mode] == "lstm"
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape) if lstm else x.new_empty(0),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            x.new_empty(w_hh.shape[0]) if has_bias else x.new_empty(0),
            w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse = inputs
    y, _, _, gates, c_all = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all)
    ctx.batch_sizes, ctx.mode, ctx.reverse, ctx.has_bias = list(batch_sizes), mode, reverse, b_ih is not None
    ctx.mark_non_differentiable(gates, c_all)
    # The gradients of the outputs that nobody used arrive as None rather than as zeros of their shapes: autograd
    # would otherwise fill [N, G·H] and [N, H] zeros for gates and c_all on every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_gates, _grad_c_all):
    x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all = ctx.saved_tensors
    lstm = MODES[ctx.mode] == "lstm"
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    if grad_c_n is None:
        grad_c_n = torch.zeros_like(c0) if lstm else x.new_empty(0)
    grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_w_hr = LSTM.call(
        "bwd", grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all, ctx.batch_sizes, ctx.mode,
        ctx.reverse, ctx.has_bias, backend=ctx.backend)
    grad_b = grad_b if ctx.has_bias else None
    return (grad_x, grad_h0, grad_c0 if lstm else None, grad_w_ih, grad_w_hh, grad_b, grad_b,
            grad_w_hr if w_hr is not None else None, None, None, None)


_FWD_SCHEMA = ("(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
               "int[] batch_sizes, int mode, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, "
               "Tensor w_hh, Tensor? w_hr, Tensor y, Tensor gates, Tensor c_all, int[] batch_sizes, int mode, "
               "bool reverse, bool has_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")

LSTM = Op(
    "lstm",
    stages={"fwd": Stage(_FWD_SCHEMA, fake=_fake_fwd, lead="x"), "bwd": Stage(_BWD_SCHEMA, fake=_fake_bwd, lead="x")},
    backends={
        "reference": Implementation(FLOATS, {"fwd": reference.recurrence_forward,
                                             "bwd": reference.recurrence_backward}),
        "cpu": Implementation(_CPU, EXTENSION),
        "cuda": Implementation(FLOATS, EXTENSION),
    },
    autograd=Autograd(_setup_context, _backward),
)

#: The backends that the layers of ``fastflow.nn.rnn`` choose by themselves (with the backend setting ``"auto"``):
#: those whose benchmark beats torch's own implementation on that device. None yet: on this CPU the fused
#: recurrence is 0.87-1.07x torch's LSTM (oneDNN) for inference and 1.17-1.21x for training at the benchmark's
#: shapes (``bench/lstm_layers.py``; the README's numbers), within this machine's drift; the CUDA kernels have not
#: been measured against cuDNN. Forced (``fastflow.set_backend("cpu")``, ``"cuda"``), the kernels run.
LAYER_AUTO: frozenset[str] = frozenset()


# --------------------------------------------------------------------------------------------------
# Public functions.


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell after its two GEMMs: ``(m, c_new)`` with ``m = o·tanh(c_new)``, ``c_new = f·c + i·g``.

    Args:
        gates: ``[B, 4H]``, the pre-activations ``x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh`` in ``torch.nn.LSTM``'s order
            ``i, f, g, o``.
        c: ``[B, H]``, the cell state; one dtype and device with ``gates``.

    Returns:
        ``(m [B, H], c_new [B, H])``, differentiable in both inputs.
    """
    _check_same("c", c, gates, "gates")
    if gates.dim() != 2 or c.dim() != 2 or gates.shape != (c.shape[0], 4 * c.shape[1]):
        raise ValueError(f"gates must be [B, 4H] and c [B, H], got gates {tuple(gates.shape)} and c {tuple(c.shape)}")
    if _backends.plain_reference():
        return reference.lstm_cell(gates, c)
    return LSTM_CELL.call("fwd", gates, c)


def lstm_recurrence(x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                    b_hh: Tensor | None, w_hr: Tensor | None = None, *, batch_sizes: Sequence[int] | None = None,
                    mode: str = "lstm", reverse: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer and one direction of an LSTM or RNN over a whole sequence: ``(y, h_n, c_n)``.

    Args:
        x: ``[N, I]`` packed by ``batch_sizes`` (``PackedSequence.data``), or ``[T, B, I]`` (``batch_sizes``
            None).
        h0: ``[B, H_r]``; c0: ``[B, H]`` for the LSTM, None for the RNNs.
        w_ih, w_hh, b_ih, b_hh, w_hr: ``torch.nn.LSTM``'s ``weight_ih_l{k}`` ``[G·H, I]``, ``weight_hh_l{k}``
            ``[G·H, H_r]``, biases ``[G·H]`` (both or neither), ``weight_hr_l{k}`` ``[H_r, H]`` or None.
        batch_sizes: rows of each step (non-increasing), as ``PackedSequence.batch_sizes``.
        mode: ``"lstm"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        reverse: run from the last step (the backward direction of a bidirectional layer).

    Returns:
        ``y`` (``[N, H_r]``, or ``[T, B, H_r]`` for a padded input), ``h_n [B, H_r]``, ``c_n [B, H]`` (None for
        the RNNs); differentiable in every tensor input.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    index = MODES.index(mode)
    padded = batch_sizes is None
    if padded:
        if x.dim() != 3:
            raise ValueError(f"x must be [T, B, I] when batch_sizes is None, got shape {tuple(x.shape)}")
        steps, batch = x.shape[:2]
        batch_sizes, x = [batch] * steps, x.reshape(steps * batch, x.shape[2])
    steps = [int(n) for n in batch_sizes]
    c0 = c0 if index == 0 else None
    _check_recurrence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps, index)
    if _backends.plain_reference():
        # The forced reference is the plain-PyTorch spec, differentiated by autograd (the benchmarks' baseline).
        y, h_n, c_n = reference.recurrence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps, index, bool(reverse))
    else:
        y, h_n, c_n, _, _ = LSTM.call("fwd", x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps, index, bool(reverse))
    if padded:
        y = y.view(len(batch_sizes), -1, y.shape[1])
    return y, h_n, c_n if index == 0 else None


def _check_recurrence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps: list[int], mode: int) -> None:
    """Shapes, dtypes and devices of :func:`lstm_recurrence`'s arguments (``x`` already ``[N, I]``)."""
    _check_same("x", x, w_ih, "w_ih")
    for name, value in (("h0", h0), ("w_hh", w_hh), ("c0", c0), ("b_ih", b_ih), ("b_hh", b_hh), ("w_hr", w_hr)):
        if value is not None:
            _check_same(name, value, x, "x")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must be given together (or both None)")
    if MODES[mode] == "lstm" and c0 is None:
        raise ValueError("c0 must be given for mode 'lstm'")
    if w_hr is not None and MODES[mode] != "lstm":
        raise ValueError(f"w_hr (a projection) needs mode 'lstm', got {MODES[mode]!r}")
    gates = reference.gate_count(mode)
    if x.dim() != 2 or h0.dim() != 2 or w_hh.dim() != 2 or w_hh.shape[0] % gates:
        raise ValueError(f"x must be [N, I], h0 [B, H_r] and w_hh [{gates}·H, H_r]; got x {tuple(x.shape)}, "
                         f"h0 {tuple(h0.shape)}, w_hh {tuple(w_hh.shape)}")
    hidden, h_size = w_hh.shape[0] // gates, (w_hr.shape[0] if w_hr is not None else w_hh.shape[0] // gates)
    expected = {"w_ih": (gates * hidden, x.shape[1]), "w_hh": (gates * hidden, h_size),
                "h0": (h0.shape[0], h_size), "c0": (h0.shape[0], hidden), "b_ih": (gates * hidden,),
                "b_hh": (gates * hidden,), "w_hr": (h_size, hidden)}
    for name, value in (("w_ih", w_ih), ("w_hh", w_hh), ("h0", h0), ("c0", c0), ("b_ih", b_ih), ("b_hh", b_hh),
                        ("w_hr", w_hr)):
        if value is not None and tuple(value.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(value.shape)}")
    increasing = any(a < b for a, b in zip(steps, steps[1:], strict=False))
    if any(n < 0 for n in steps) or increasing or (steps and steps[0] > h0.shape[0]):
        raise ValueError(f"batch_sizes must be non-increasing, non-negative and at most h0's {h0.shape[0]} rows, "
                         f"got {steps}")
    if sum(steps) != x.shape[0]:
        raise ValueError(f"batch_sizes sum to {sum(steps)} but x has {x.shape[0]} rows")


def _check_same(name: str, value: Tensor, like: Tensor, like_name: str) -> None:
    check_floating(like_name, like)
    check_floating(name, value)
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but {like_name} is on {like.device}; put them on one device")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {like_name} has {like.dtype}; they must match")
