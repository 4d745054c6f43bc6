"""The nade op beyond the generic op suite (``test_generic.py``, cases in ``cases_nade.py``): sampling equal across
backends for the same uniforms, a normalised distribution, MNIST-sized scans (``D = 784``) against the
materialising reference and the float64 truth forward and backward, the compensated running sum, orders, bad
input, NaN propagation and the CPU kernel's independence of the thread count."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.ops import nade, nade_sample
from fastflow.ops.nade import NADE
from fastflow.reference import nade as reference
from tests.numerics import assert_close_to_reference, max_error

BACKENDS = ["reference", "cpu", "triton"]
CPU = torch.device("cpu")


def _use(backend: str, dtype: torch.dtype):
    """The context forcing ``backend`` (its custom-op stages; the plain reference is ``reference.nade``), or a skip
    with its reason."""
    reason = _backends.why_not(backend, "nade", CPU, dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    return _backends.reference_through_ops() if backend == "reference" else fastflow.set_backend(backend)


def _params(dims: int, hidden: int, seed: int, dtype=torch.float64, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(hidden, dims, generator=g, dtype=torch.float64) / dims**0.5
    c = torch.randn(hidden, generator=g, dtype=torch.float64)
    V = torch.randn(dims, hidden, generator=g, dtype=torch.float64) / hidden**0.5
    b = torch.randn(dims, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (W, c, V, b))


def _binary(batch: int, dims: int, seed: int, dtype=torch.float64, p: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, dims, generator=g) < p).to(dtype)


# --------------------------------------------------------------------------------------------------
# Sampling.


def _untied_uniforms(W, c, V, b, batch: int, seed: int, margin: float = 1e-3) -> torch.Tensor:
    """Uniforms whose every comparison ``u_d < p_d`` along the sample they draw (float64 truth) is at least
    ``margin`` from a tie: each backend must then draw exactly that sample (a tie may go either way, and a
    different ``x_d`` changes every later conditional)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, W.shape[1], generator=g, dtype=torch.float64)
    a = c.expand(batch, -1)
    for i in range(W.shape[1]):
        p = torch.sigmoid(torch.sigmoid(a) @ V[i] + b[i])
        below = u[:, i] < p
        close = (u[:, i] - p).abs() < margin
        u[:, i] = torch.where(close, torch.where(below, p - margin, p + margin), u[:, i])
        a = a + below.double()[:, None] * W[:, i]
    return u


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("batch", "dims", "hidden"), [(7, 12, 5), (3, 20, 13), (0, 4, 3)])
def test_sampling_is_equal_on_every_backend(batch, dims, hidden, dtype):
    W, c, V, b = _params(dims, hidden, seed=dims + hidden, scale=3.0)
    u = _untied_uniforms(W, c, V, b, batch, seed=batch)
    params = [t.to(dtype) for t in (W, c, V, b)]
    truth = reference.nade_sample(W, c, V, b, u)
    with fastflow.set_backend("reference"):
        plain = nade_sample(*params, u)
    assert torch.equal(plain.double(), truth)
    for backend in BACKENDS:
        if _backends.why_not(backend, "nade", CPU, dtype) is not None:
            continue
        with _use(backend, dtype), _backends.trace() as calls:
            x = nade_sample(*params, u.to(dtype))
        assert ("nade", "sample", backend) in calls
        assert x.dtype == dtype and x.shape == (batch, dims)
        assert torch.equal(x.double(), truth), f"{backend}: {int((x.double() != truth).sum())} dimensions differ"
    with _backends.trace() as calls:  # the automatic choice
        nade_sample(*params, u)
    assert calls and calls[0][:2] == ("nade", "sample")


def test_sampling_draws_the_model_distribution():
    """A D = 3 model: the frequencies of 8 000 samples match exp(log_prob) of the 8 states."""
    W, c, V, b = _params(3, 4, seed=1, dtype=torch.float32, scale=2.0)
    u = torch.rand(8000, 3, generator=torch.Generator().manual_seed(2))
    x = nade_sample(W, c, V, b, u)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    probs = nade(states, W, c, V, b)[1].exp()
    counts = torch.stack([(x == s).all(1).float().mean() for s in states])
    assert (counts - probs).abs().max() < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_in_an_order_is_sampling_the_permuted_model(backend):
    dims, hidden = 6, 5
    W, c, V, b = _params(dims, hidden, seed=3, dtype=torch.float32, scale=2.0)
    order = [4, 1, 5, 0, 3, 2]
    u = torch.rand(9, dims, generator=torch.Generator().manual_seed(4))
    with _use(backend, torch.float32):
        x = nade_sample(W, c, V, b, u, order=order)
        x_permuted = nade_sample(W[:, order], c, V[order], b[order], u[:, order])
    assert torch.equal(x[:, order], x_permuted)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_custom_op_passes_opcheck(backend):
    with _use(backend, torch.float32):
        pass
    W, c, V, b = _params(5, 4, seed=5, dtype=torch.float32)
    u = torch.rand(3, 5, generator=torch.Generator().manual_seed(6))
    torch.library.opcheck(NADE.custom_ops["sample"], (W, c, V, b, u, backend))


def test_sampling_is_not_differentiable_and_leaves_no_graph():
    W, c, V, b = (t.requires_grad_(True) for t in _params(4, 3, seed=7, dtype=torch.float32))
    x = nade_sample(W, c, V, b, torch.rand(2, 4))
    assert not x.requires_grad and x.grad_fn is None


# --------------------------------------------------------------------------------------------------
# The distribution and MNIST-sized scans.


@pytest.mark.parametrize("backend", ["plain"] + BACKENDS)
def test_probabilities_of_all_states_sum_to_one(backend):
    dims = 4
    dtype = torch.float32 if backend == "triton" else torch.float64
    W, c, V, b = _params(dims, 3, seed=8, dtype=dtype, scale=3.0)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=dims)), dtype=dtype)
    context = fastflow.set_backend("reference") if backend == "plain" else _use(backend, dtype)
    with context:
        logits, log_prob = nade(states, W, c, V, b)
    total = log_prob.double().exp().sum().item()
    assert abs(total - 1.0) < (1e-5 if dtype == torch.float32 else 1e-12)
    # The log-likelihood is the sum of the Bernoulli log-probabilities of the logits.
    bernoulli = torch.distributions.Bernoulli(logits=logits.double()).log_prob(states.double()).sum(1)
    torch.testing.assert_close(log_prob.double(), bernoulli, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


MNIST = (4, 784, 32)  # B, D, H
# Triton's interpreter runs a kernel's every step in Python: there the Triton variants run at H = 8 (one tile),
# which still takes all D = 784 steps (compiled, on a GPU, they run at H = 32).
INTERPRETED_HIDDEN = 8


def _mnist_case(seed: int = 9, backend: str = "cpu", scale: float = 4.0, p: float = 0.15):
    """``x`` with a fraction ``p`` of ones (MNIST's is about 0.13) and weights of ``scale/√D``: ``scale = 4``
    gives pre-activations of a few units, ``scale = 40`` of tens (a stress for the running sum)."""
    batch, dims, hidden = MNIST
    if backend == "triton" and _backends.triton_interpreted():
        hidden = INTERPRETED_HIDDEN
    W, c, V, b = _params(dims, hidden, seed=seed, scale=scale)
    x = _binary(batch, dims, seed=seed + 1, p=p)
    return x, W, c, V, b


@pytest.mark.parametrize("backend", BACKENDS)
def test_mnist_sized_forward_matches_the_materialising_reference(backend):
    """``D = 784``: the op's logits and log-likelihood in float32 against the float64 truth, within the suite's
    rule, with the materialising reference in float32 as the low-precision reference; and against that reference
    directly."""
    x, W, c, V, b = _mnist_case(backend=backend)
    truth = reference.nade(x, W, c, V, b)
    low = reference.nade_materialized(*(t.float() for t in (x, W, c, V, b)))
    with _use(backend, torch.float32):
        fast = nade(*(t.float() for t in (x, W, c, V, b)))
    for name, value, value_low, value64 in zip(("logits", "log_prob"), fast, low, truth, strict=True):
        assert_close_to_reference(name, value, value_low, value64, torch.float32)
        scale = value64.abs().max().item()
        assert max_error(value, value_low) <= 4e-6 * scale, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_mnist_sized_backward_float32_error_is_bounded(backend):
    """``D = 784``, float32, large pre-activations (``|a|`` of tens): every gradient within the suite's rule of the
    float64 truth (the materialising reference in float32, differentiated by autograd, as the low-precision
    reference) and within ``2e-6`` of its scale. The compensated walk measures 1.6e-7 – 5.5e-7 here (CPU); a
    backward recovering ``a_i`` by plain float32 subtraction measured 2.6e-6 – 3.8e-6 on the same inputs."""
    x, W, c, V, b = _mnist_case(seed=11, backend=backend, scale=40.0, p=0.5)
    g = torch.Generator().manual_seed(12)
    grad_logits = torch.randn(x.shape, generator=g)
    grad_log_prob = torch.randn(x.shape[0], generator=g)

    def gradients(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        logits, log_prob = fn(*leaves)
        dtype = logits.dtype
        return torch.autograd.grad([logits, log_prob], leaves, [grad_logits.to(dtype), grad_log_prob.to(dtype)])

    truth = gradients(reference.nade, (x, W, c, V, b))
    low = gradients(reference.nade_materialized, [t.float() for t in (x, W, c, V, b)])
    with _use(backend, torch.float32):
        fast = gradients(nade, [t.float() for t in (x, W, c, V, b)])
    for name, value, value_low, value64 in zip("xWcVb", fast, low, truth, strict=True):
        assert_close_to_reference(f"grad_{name}", value, value_low, value64, torch.float32)
        scale = max(1.0, value64.abs().max().item())
        assert max_error(value, value64) <= 2e-6 * scale, f"grad_{name}"


def test_compensated_reverse_walk_returns_to_the_start():
    """TwoSum is exact, and the compensated walk ``a_D -> a_0`` over 784 float32 steps lands on ``c`` to one
    rounding, where plain float32 subtraction drifts."""
    g = torch.Generator().manual_seed(13)
    hi = torch.randn(10_000, generator=g)
    w = torch.randn(10_000, generator=g) * 10.0 ** torch.randint(-8, 8, (10_000,), generator=g)
    s, e = reference.two_sum(hi, w)
    assert torch.equal(s.double() + e.double(), hi.double() + w.double())

    x, W, c, _, _ = _mnist_case(seed=14)
    W32, c32 = W.float(), c.float()
    hi, lo = reference.final_preactivation(x.float(), W32, c32)
    plain = hi.clone()
    for i in reversed(range(x.shape[1])):
        step = x[:, i, None].float() * W32[:, i]
        hi, lo = reference.two_sum(hi, -step)[0], lo + reference.two_sum(hi, -step)[1]
        plain = plain - step
    compensated_error = ((hi.double() + lo.double()) - c.double()).abs().max().item()
    plain_error = (plain.double() - c.double()).abs().max().item()
    assert compensated_error < 1e-6 * c.abs().max().item()
    assert compensated_error < plain_error / 10


# --------------------------------------------------------------------------------------------------
# Orders.


@pytest.mark.parametrize("backend", ["plain"] + BACKENDS)
def test_an_order_is_a_gather_of_the_dimensions(backend):
    dims = 7
    W, c, V, b = _params(dims, 5, seed=15, dtype=torch.float64 if backend != "triton" else torch.float32)
    x = _binary(3, dims, seed=16, dtype=W.dtype, p=0.5)
    order = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    context = fastflow.set_backend("reference") if backend == "plain" else _use(backend, W.dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, W, c, V, b)]
    with context:
        logits, log_prob = nade(*leaves, order=order)
    expected_logits, expected_log_prob = reference.nade(x[:, order], W[:, order], c, V[order], b[order])
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if W.dtype == torch.float32 else {}
    torch.testing.assert_close(logits[:, order], expected_logits, **tolerance)
    torch.testing.assert_close(log_prob, expected_log_prob, **tolerance)
    # logit_d depends only on the dimensions before d in the order.
    jacobian = torch.autograd.functional.jacobian(lambda x_: nade(x_, W, c, V, b, order=order)[0][0], x[:1])[:, 0]
    position = torch.argsort(order)
    before = position[None, :] < position[:, None]  # [d, j]: j comes before d
    assert (jacobian[~before] == 0).all()
    grads = torch.autograd.grad(log_prob.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


def test_order_values_are_checked_once_per_tensor_version(monkeypatch):
    module = sys.modules["fastflow.ops.nade"]  # fastflow.ops.nade is the function; the module is in sys.modules
    W, c, V, b = _params(4, 3, seed=17, dtype=torch.float32)
    x = _binary(2, 4, seed=18, dtype=torch.float32)
    order = torch.tensor([2, 0, 3, 1])
    reads = []
    original = module._check_permutation
    monkeypatch.setattr(module, "_check_permutation", lambda *a: reads.append(1) or original(*a))
    nade(x, W, c, V, b, order=order)
    nade(x, W, c, V, b, order=order)
    assert len(reads) == 1
    order[0], order[1] = 0, 2  # a new version: checked again
    nade(x, W, c, V, b, order=order)
    assert len(reads) == 2
    nade(x, W, c, V, b, order=order, check_values=False)
    assert len(reads) == 2


# --------------------------------------------------------------------------------------------------
# Bad input, non-finite weights, threads.


def _good():
    W, c, V, b = _params(5, 3, seed=19, dtype=torch.float32)
    return {"x": _binary(2, 5, seed=20, dtype=torch.float32), "W": W, "c": c, "V": V, "b": b}


@pytest.mark.parametrize(("name", "value", "error", "match"), [
    ("x", torch.ones(2, 5, dtype=torch.int64), TypeError, r"x must be a floating-point tensor"),
    ("x", torch.ones(2, 5, 1), ValueError, r"x must be \[B, D\]"),
    ("x", [[0.0] * 5] * 2, TypeError, r"x must be a torch.Tensor"),
    ("W", torch.ones(3, 4), ValueError, r"W must have shape \(H, 5\) for x with 5 dimensions"),
    ("W", torch.ones(3, 5, dtype=torch.float64), TypeError, r"W has dtype torch.float64 but x has torch.float32"),
    ("W", torch.ones(0, 5), ValueError, r"H >= 1"),
    ("c", torch.ones(4), ValueError, r"c must have shape \(3,\) \(one bias per hidden unit\)"),
    ("V", torch.ones(3, 5), ValueError, r"V must have shape \(5, 3\)"),
    ("V", torch.ones(5, 3, device="meta"), ValueError, r"V is on meta but x is on cpu"),
    ("b", torch.ones(5, dtype=torch.float16), TypeError, r"b has dtype torch.float16"),
    ("b", None, TypeError, r"b must be a torch.Tensor, got NoneType"),
])
def test_bad_arguments_are_named(name, value, error, match):
    arguments = _good()
    arguments[name] = value
    with pytest.raises(error, match=match):
        nade(**arguments)


@pytest.mark.parametrize(("order", "error", "match"), [
    ([0, 1, 2, 3], ValueError, r"order must have 5 entries"),
    ([0, 1, 2, 3, 3], ValueError, r"order must be a permutation of 0..4 .*3 appears more than once and 4 never"),
    (torch.tensor([0, 1, 2, 3, 5]), ValueError, r"5 is out of range"),
    (torch.tensor([0.0, 1, 2, 3, 4]), TypeError, r"order must be an integer tensor"),
    (torch.tensor([[0, 1, 2, 3, 4]]), ValueError, r"order must have shape \(5,\)"),
    ([0, 1, 2, 3, True], TypeError, r"order must be a sequence of ints"),
    ("01234", TypeError, r"order must be None, a sequence of ints or an integer tensor"),
])
def test_bad_orders_are_named(order, error, match):
    with pytest.raises(error, match=match):
        nade(**_good(), order=order)


def test_bad_sampling_arguments_are_named():
    arguments = _good()
    del arguments["x"]
    with pytest.raises(ValueError, match=r"u must have shape \(B, 5\) for W of shape \(3, 5\), got \(2, 4\)"):
        nade_sample(**arguments, u=torch.rand(2, 4))
    with pytest.raises(TypeError, match=r"u must be a floating-point tensor"):
        nade_sample(**arguments, u=torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"c must have shape \(3,\)"):
        nade_sample(arguments["W"], torch.ones(2), arguments["V"], arguments["b"], torch.rand(2, 5))


def test_a_forced_backend_that_cannot_run_says_why():
    arguments = {name: t.double() for name, t in _good().items()}
    with fastflow.set_backend("triton"), pytest.raises(_backends.BackendError, match=r"(?s)cannot run nade.*triton"):
        nade(**arguments)
    del arguments["x"]
    with fastflow.set_backend("triton"), pytest.raises(_backends.BackendError, match=r"(?s)cannot run nade.*cpu"):
        nade_sample(**arguments, u=torch.rand(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_column_propagates_as_the_formula_says(backend):
    """``x_d = 0`` adds ``0·W[:, d]``: NaN when that column holds an infinity (the kernels skip the update of a
    zero ``x_d`` only for finite columns)."""
    arguments = _good()
    arguments["x"][:, 1] = 0.0
    arguments["W"][0, 1] = float("inf")
    expected, _ = reference.nade(**{name: t.double() for name, t in arguments.items()})
    with _use(backend, torch.float32):
        logits, _ = nade(**arguments)
    assert torch.equal(torch.isnan(logits), torch.isnan(expected))
    assert torch.isnan(logits[:, 2:]).all() and not torch.isnan(logits[:, :2]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_gradient_reaches_every_weight_gradient_the_formula_says(backend):
    """A NaN in the logits' gradient makes ``G`` NaN from its dimension down: ``∂L/∂W[:, i] = Σ_b x_i·G`` is then
    NaN also for the columns of dimensions where every ``x_i`` is 0 (0·NaN), which the CPU kernel's skipping of
    zero terms must not hide (it reruns with every term when ``G`` ends non-finite)."""
    arguments = _good()
    arguments["x"][:, :3] = 0.0
    grad_logits = torch.zeros(arguments["x"].shape)
    grad_logits[0, 4] = float("nan")
    expected = _gradients(reference.nade, {name: t.double() for name, t in arguments.items()}, grad_logits.double())
    with _use(backend, torch.float32):
        fast = _gradients(nade, arguments, grad_logits)
    for name, value, truth in zip("xWcVb", fast, expected, strict=True):
        assert torch.equal(torch.isnan(value), torch.isnan(truth)), f"grad_{name}"
    assert torch.isnan(fast[1][:, :3]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_binary_inputs_follow_the_formula(backend):
    """The op is the formula for any real ``x`` (the models check for binary data, the op does not): values other
    than 0 and 1 take the kernels' scaled-column path, forward and backward, against the float64 truth."""
    arguments = _good()
    g = torch.Generator().manual_seed(31)
    arguments["x"] = torch.tensor([0.0, 0.5, 1.0, 2.0, -1.5])[torch.randint(0, 5, arguments["x"].shape, generator=g)]
    grad_logits = torch.randn(arguments["x"].shape, generator=g)
    truth64 = _gradients(reference.nade, {name: t.double() for name, t in arguments.items()}, grad_logits.double())
    with _use(backend, torch.float32):
        fast = _gradients(nade, arguments, grad_logits)
    for name, value, truth in zip("xWcVb", fast, truth64, strict=True):
        assert max_error(value, truth) <= 1e-5 * max(1.0, truth.abs().max().item()), f"grad_{name}"


def _gradients(fn, arguments: dict, grad_logits: torch.Tensor):
    """Gradients of (x, W, c, V, b) of ``fn``'s logits and log-likelihood for ``grad_logits`` and ones."""
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in arguments.items()}
    logits, log_prob = fn(**leaves)
    outputs = [logits, log_prob]
    seeds = [grad_logits.to(logits.dtype), torch.ones_like(log_prob)]
    return torch.autograd.grad(outputs, [leaves[name] for name in "xWcVb"], seeds)


def test_cpu_kernel_does_not_depend_on_the_thread_count():
    with _use("cpu", torch.float32):
        pass
    W, c, V, b = _params(20, 300, seed=21, dtype=torch.float32)
    x = _binary(64, 20, seed=22, dtype=torch.float32)
    grads_logits = torch.randn(64, 20, generator=torch.Generator().manual_seed(23))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            logits, log_prob = torch.ops.fastflow_C.nade_fwd(x, W, c, V, b)
            grads = torch.ops.fastflow_C.nade_bwd(grads_logits, torch.ones(64), x, W, c, V, b, logits)
            results.append((logits, log_prob, *grads))
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*results, strict=True):
        assert torch.equal(first, second)
