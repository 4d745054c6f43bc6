"""``fastflow.nn.LSTM``, ``RNN`` and ``LSTMCell`` as drop-in replacements of ``torch.nn``'s (issue 12).

Parity: the same ``state_dict`` in both modules, the same inputs; outputs, final states and the gradients of every
parameter and of the input agree (float64 ≤ 1e-10 relative, float32 ≤ 1e-5) across layers, directions,
``batch_first``, ``proj_size``, biases, dropout in eval, packed sequences of mixed lengths and unbatched inputs.
Then what drop-in means beyond values: ``state_dict`` keys, whole-module save and load, ``flatten_parameters``,
torch's errors for bad shapes, and the fallback to torch's implementation where no kernel runs.
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fastflow
from fastflow import _backends
from fastflow.nn import LSTM, RNN, LSTMCell

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _pair(kind: str, dtype, hidden: int = 5, **options) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    if kind == "lstm":
        theirs, ours = nn.LSTM(4, hidden, **options), LSTM(4, hidden, **options)
    else:
        nonlinearity = {"rnn": "tanh", "relu": "relu"}[kind]
        theirs = nn.RNN(4, hidden, nonlinearity=nonlinearity, **options)
        ours = RNN(4, hidden, nonlinearity=nonlinearity, **options)
    theirs = theirs.to(dtype).eval()
    ours = ours.to(dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _inputs(kind: str, layout: str, options: dict, dtype, with_state: bool, hidden: int = 5):
    """``(input factory, hx)``: a fresh leaf input per call (its gradient is compared too)."""
    generator = torch.Generator().manual_seed(1)
    batch, steps = 3, 6
    if layout == "packed":
        sequences = [torch.randn(n, 4, generator=generator, dtype=dtype) for n in (4, 6, 2)]

        def make():
            leaves = [s.clone().requires_grad_(True) for s in sequences]
            return pack_sequence(leaves, enforce_sorted=False), leaves
    else:
        shape = (steps, 4) if layout == "unbatched" else ((batch, steps, 4) if options.get("batch_first")
                                                          else (steps, batch, 4))
        x = torch.randn(*shape, generator=generator, dtype=dtype)

        def make():
            leaf = x.clone().requires_grad_(True)
            return leaf, [leaf]
    hx = None
    if with_state:
        layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
        h_size = options.get("proj_size", 0) or hidden
        dims = (layers, h_size) if layout == "unbatched" else (layers, batch, h_size)
        h0 = torch.randn(*dims, generator=generator, dtype=dtype)
        if kind == "lstm":
            cdims = dims[:-1] + (hidden,)
            hx = (h0, torch.randn(*cdims, generator=generator, dtype=dtype))
        else:
            hx = h0
    return make, hx


def _run(module: nn.Module, make, hx):
    module.zero_grad()
    inp, leaves = make()
    out, hidden = module(inp, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = data.square().sum() + sum(s.sin().sum() for s in states)
    loss.backward()
    return [data, *states, *[p.grad for p in module.parameters()], *[leaf.grad for leaf in leaves]]


CONFIGS = [
    dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
         dropout=0.3 if layers > 1 else 0.0)
    for layers, bidirectional, batch_first, bias in itertools.product([1, 3], [False, True], [False, True],
                                                                      [True, False])
]


# Hidden size 5: the CPU kernel's loop of library GEMMs (any size, float64 too); 32: its fused tiled recurrence
# (float32, H a multiple of 16, no projection).
@pytest.mark.parametrize("dtype,hidden", [(torch.float64, 5), (torch.float32, 5), (torch.float32, 32)],
                         ids=["float64", "float32", "float32-H32"])
@pytest.mark.parametrize("layout", ["padded", "packed", "unbatched"])
@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 3), ("rnn", 0), ("relu", 0)])
def test_outputs_states_and_gradients_equal_torch_nn(kind, proj, layout, dtype, hidden):
    worst = 0.0
    for index, options in enumerate(CONFIGS):
        if proj:
            options = {**options, "proj_size": proj}
        theirs, ours = _pair(kind, dtype, hidden, **options)
        make, hx = _inputs(kind, layout, options, dtype, with_state=index % 2 == 1, hidden=hidden)
        with fastflow.set_backend("cpu"), _backends.trace() as calls:
            mine = _run(ours, make, hx)
        assert any(op == "lstm" for op, _, _ in calls), "the fused op did not run"
        expected = _run(theirs, make, hx)
        assert len(mine) == len(expected)
        for a, b in zip(mine, expected, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            worst = max(worst, _relative(a, b))
    assert worst <= TOLERANCE[dtype], worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_equals_torch_nn(dtype, batched, bias):
    torch.manual_seed(0)
    theirs = nn.LSTMCell(4, 6, bias=bias).to(dtype)
    ours = LSTMCell(4, 6, bias=bias).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(2)
    xs = torch.randn(5, 3, 4, generator=generator, dtype=dtype)
    if not batched:
        xs = xs[:, 0]
    results = []
    for module in (theirs, ours):
        module.zero_grad()
        x = xs.clone().requires_grad_(True)
        state, loss = None, 0
        with fastflow.set_backend("cpu"), _backends.trace() as calls:
            for t in range(xs.shape[0]):  # a loop of cells, the state carried (and None at first)
                state = module(x[t], state)
                loss = loss + state[0].square().sum() + state[1].sin().sum()
            loss.backward()
        if module is ours:
            assert any(op == "lstm_cell" for op, _, _ in calls)
        results.append([*state, x.grad, *[p.grad for p in module.parameters()]])
    for a, b in zip(results[1], results[0], strict=True):
        assert a.shape == b.shape
        assert _relative(a, b) <= TOLERANCE[dtype]


def test_drop_in_state_dict_save_load_and_flatten_parameters():
    torch.manual_seed(0)
    ours = LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    ours.flatten_parameters()
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is LSTM
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(loaded(x)[0], theirs(x)[0])
    for cls, base in ((RNN, nn.RNN), (LSTMCell, nn.LSTMCell)):
        assert issubclass(cls, base) and list(cls(3, 4).state_dict()) == list(base(3, 4).state_dict())


def test_training_mode_dropout_runs_between_layers():
    torch.manual_seed(0)
    ours = LSTM(3, 4, num_layers=3, dropout=0.5).train()
    x = torch.randn(6, 2, 3)
    y1, y2 = ours(x)[0], ours(x)[0]
    assert y1.shape == (6, 2, 4) and not torch.equal(y1, y2)  # dropout draws differ
    ours.eval()
    torch.testing.assert_close(ours(x)[0], ours(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("build,call", [
    (lambda: (nn.LSTM(3, 4), LSTM(3, 4)), lambda m: m(torch.randn(5, 2, 7))),  # input size
    (lambda: (nn.LSTM(3, 4), LSTM(3, 4)), lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4),
                                                                              torch.zeros(1, 3, 4)))),
    (lambda: (nn.LSTM(3, 4), LSTM(3, 4)), lambda m: m(torch.randn(2, 5, 2, 3))),  # 4-D input
    (lambda: (nn.LSTM(3, 4), LSTM(3, 4)), lambda m: m(torch.randn(5, 2, 3), (torch.zeros(4), torch.zeros(4)))),
    (lambda: (nn.RNN(3, 4), RNN(3, 4)), lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))),
    (lambda: (nn.RNN(3, 4), RNN(3, 4)), lambda m: m(torch.randn(5, 3), torch.zeros(1, 2, 4))),
    (lambda: (nn.LSTMCell(3, 4), LSTMCell(3, 4)), lambda m: m(torch.randn(2, 5))),
    (lambda: (nn.LSTMCell(3, 4), LSTMCell(3, 4)), lambda m: m(torch.randn(2, 3), (torch.zeros(3, 4),
                                                                                  torch.zeros(3, 4)))),
    (lambda: (nn.LSTMCell(3, 4), LSTMCell(3, 4)), lambda m: m(torch.randn(2, 3), (torch.zeros(2, 5),
                                                                                  torch.zeros(2, 5)))),
    (lambda: (nn.LSTMCell(3, 4), LSTMCell(3, 4)), lambda m: m(torch.randn(2, 2, 3))),
])
def test_bad_shapes_give_torch_nn_errors(build, call):
    theirs, ours = build()
    with pytest.raises(Exception) as expected:
        call(theirs)
    with pytest.raises(type(expected.value)):
        call(ours)


def test_automatic_choice_runs_torch_where_the_kernel_is_not_ahead():
    """``LAYER_AUTO`` is empty on this CPU (torch's oneDNN LSTM is faster): with the automatic choice the layers run
    torch's implementation, bit for bit torch's results; forced, the kernel runs."""
    from fastflow.ops.lstm import LAYER_AUTO

    assert "cpu" not in LAYER_AUTO
    torch.manual_seed(0)
    theirs, ours = nn.LSTM(3, 4, num_layers=2), LSTM(3, 4, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3)
    with _backends.trace() as calls:
        got = ours(x)[0]
    assert not any(op == "lstm" for op, _, _ in calls)
    torch.testing.assert_close(got, theirs(x)[0], rtol=0, atol=0)
    with fastflow.set_backend("cpu"), _backends.trace() as calls:
        forced = ours(x)[0]
    assert any(op == "lstm" and ran == "cpu" for op, _, ran in calls)
    torch.testing.assert_close(forced, got, rtol=1e-5, atol=1e-6)


def test_what_no_kernel_runs_falls_back_to_torch():
    """bfloat16 on the CPU and autocast have no kernel: torch's implementation runs, with torch's results."""
    torch.manual_seed(0)
    theirs, ours = nn.LSTM(3, 4).bfloat16(), LSTM(3, 4).bfloat16()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3).bfloat16()
    with _backends.trace() as calls:
        got = ours(x)[0]
    assert not any(op == "lstm" for op, _, _ in calls)
    torch.testing.assert_close(got, theirs(x)[0], rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours.float()(torch.randn(5, 2, 3))[0].dtype == torch.bfloat16
    with fastflow.set_backend("cpu"), pytest.raises(fastflow.BackendError, match="bfloat16"):
        LSTM(3, 4).bfloat16()(x)


@pytest.mark.parametrize("change,error,pattern", [
    (dict(w_ih=torch.zeros(20, 4)), ValueError, "w_ih must have shape"),
    (dict(h0=torch.zeros(3, 6)), ValueError, "h0 must have shape"),
    (dict(c0=None), ValueError, "c0 must be given"),
    (dict(b_hh=None), ValueError, "b_ih and b_hh"),
    (dict(w_hh=torch.zeros(20, 5, dtype=torch.float64)), TypeError, "w_hh has dtype"),
    (dict(x=torch.zeros(12, 3, dtype=torch.int64)), TypeError, "x must be a floating-point"),
    (dict(batch_sizes=[3, 4, 3, 2]), ValueError, "batch_sizes must be non-increasing"),
    (dict(batch_sizes=[3, 3, 3]), ValueError, "batch_sizes sum to 9"),
])
def test_lstm_recurrence_bad_input_names_the_argument(change, error, pattern):
    from fastflow.ops.lstm import lstm_recurrence

    args = dict(x=torch.zeros(12, 3), h0=torch.zeros(3, 5), c0=torch.zeros(3, 5), w_ih=torch.zeros(20, 3),
                w_hh=torch.zeros(20, 5), b_ih=torch.zeros(20), b_hh=torch.zeros(20), batch_sizes=[3, 3, 3, 3])
    args.update(change)
    with pytest.raises(error, match=pattern):
        lstm_recurrence(**args)


# ----------------------------------------------------------------------------------------------------------------
# The CPU kernel's fused recurrence (float32, H a multiple of 16): its tiles cover batch rows in blocks of up to 6
# and hidden units in blocks of 16 (forward LSTM) or 64 (RNN, every backward), shared out among threads.


def _sequence_case(kind: str, hidden: int, batch: int, lengths: list[int] | None, scale: float = 1.0,
                   bidirectional: bool = False):
    """(fastflow layer, torch.nn float64 twin, float32 input factory): weights scaled by ``scale`` (large ones
    saturate every gate)."""
    theirs, ours = _pair(kind, torch.float32, hidden, bidirectional=bidirectional)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(scale)
    theirs = theirs.double()
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    generator = torch.Generator().manual_seed(2)
    steps = max(lengths) if lengths else 7
    x = torch.randn(steps, batch, 4, generator=generator)

    def make(dtype):
        leaf = x.to(dtype).clone().requires_grad_(True)
        if lengths is None:
            return leaf, [leaf]
        return torch.nn.utils.rnn.pack_padded_sequence(leaf, torch.tensor(lengths), enforce_sorted=False), [leaf]

    return ours, theirs, make


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the fused path needs AVX-512")
@pytest.mark.parametrize("kind", ["lstm", "rnn", "relu"])
@pytest.mark.parametrize("hidden,batch,lengths", [
    (16, 1, None), (48, 7, None), (80, 13, [5, 1, 3, 5, 2, 4, 4, 1, 5, 3, 2, 2, 5]), (160, 6, [3, 7, 7, 1, 2, 6]),
])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_recurrence_equals_float64_torch_nn(kind, hidden, batch, lengths, bidirectional):
    ours, theirs, make = _sequence_case(kind, hidden, batch, lengths, bidirectional=bidirectional)
    with fastflow.set_backend("cpu"):
        mine = _run(ours, lambda: make(torch.float32), None)
    expected = _run(theirs, lambda: make(torch.float64), None)
    for a, b in zip(mine, expected, strict=True):
        assert _relative(a.double(), b) <= 1e-5


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the fused path needs AVX-512")
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_fused_recurrence_saturated_gates(kind):
    """Weights ×40: pre-activations in the tens, where sigmoid and tanh saturate (and their derivatives vanish).
    The gradients are then ill-conditioned in float32 itself (torch.nn's float32 LSTM is ~2e-5 from float64), so
    the kernel is held to torch's float32 error, not to a fixed bound."""
    ours, theirs, make = _sequence_case(kind, 32, 5, [6, 6, 2, 4, 1], scale=40.0)
    torch_f32 = type(theirs)(4, 32, nonlinearity=theirs.nonlinearity) if kind != "lstm" else nn.LSTM(4, 32)
    torch_f32.load_state_dict(ours.state_dict())
    with fastflow.set_backend("cpu"):
        mine = _run(ours, lambda: make(torch.float32), None)
    plain = _run(torch_f32, lambda: make(torch.float32), None)
    expected = _run(theirs, lambda: make(torch.float64), None)
    for a, p, b in zip(mine, plain, expected, strict=True):
        assert torch.isfinite(a).all()
        assert _relative(a.double(), b) <= 1.5 * _relative(p.double(), b) + 1e-6


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the fused path needs AVX-512")
def test_fused_recurrence_does_not_depend_on_the_thread_count():
    """Each number is computed by one thread in a fixed order, whichever thread claims its block."""
    ours, _, make = _sequence_case("lstm", 96, 9, [4, 4, 3, 1, 2, 4, 4, 2, 3], bidirectional=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with fastflow.set_backend("cpu"):
                results.append(_run(ours, lambda: make(torch.float32), None))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the fused path needs AVX-512")
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_fused_recurrence_propagates_nan_as_torch_nn(kind):
    theirs, ours = _pair(kind, torch.float32, 32)
    x = torch.randn(6, 5, 4)
    x[2, 1, 0] = float("nan")
    with fastflow.set_backend("cpu"):
        mine, _ = ours(x)
    expected, _ = theirs(x)
    assert torch.equal(mine.isnan(), expected.isnan()) and mine.isnan().any()


def test_layer_benchmark_counts_the_gemm_work_and_reports_rates(tmp_path):
    """``bench.lstm_layers``: the FLOP count behind its GFLOP/s (2·T·B·4H·(I + H) per layer, layers after the first
    reading H inputs; training three times that), and a tiny run's report with the rates and the matmul ceiling."""
    import json

    from bench import lstm_layers

    one = lstm_layers.gemm_flops(steps=2, batch=3, inputs=5, hidden=7, layers=1, training=False)
    assert one == 2 * 2 * 3 * 28 * 12
    two = lstm_layers.gemm_flops(steps=2, batch=3, inputs=5, hidden=7, layers=2, training=True)
    assert two == 3 * (one + 2 * 2 * 3 * 28 * 14)
    assert lstm_layers.main(["--steps", "3", "--batch", "2", "--input", "8", "--hidden", "16", "--rounds", "1",
                             "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-lstm-layers.json")
    report = json.loads(path.read_text())
    result = report["results"]["16"]
    flops = lstm_layers.gemm_flops(steps=3, batch=2, inputs=8, hidden=16, layers=1, training=True)
    assert result["training_gflop"] == pytest.approx(flops / 1e9)
    for name in lstm_layers.PROVIDERS:
        assert result["training_gflops"][name] == pytest.approx(flops / result["training"][name] / 1e9)
    assert report["matmul_gflops"]["before"] > 0 and report["matmul_gflops"]["after"] > 0
