"""The coupling op on every available backend: forward, log-determinant and every gradient against the
float64 reference on irregular shapes and strides; opcheck, gradcheck, torch.compile, no copies, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.ops import additive_coupling, affine_coupling
from fastflow.reference import coupling as reference
from tests.numerics import assert_close_to_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["reference", "cpu", "triton", "cuda"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# (shape of x, mask): odd C/H/W, B=1, an empty batch, vectors.
CASES = [
    ((3, 6, 5, 3), "channel"),
    ((1, 4, 1, 7), "channel"),
    ((0, 4, 3, 3), "channel"),
    ((5, 10), "channel"),
    ((3, 3, 5, 4), "checkerboard"),
    ((2, 5, 3, 3), "checkerboard"),
    ((4, 7), "checkerboard"),
]
SCALES = ["sigmoid", "exp", "additive"]
DIRECTIONS = [(False, False), (True, False), (False, True), (True, True)]  # (flip, inverse)


def _use(backend: str, device: str, dtype: torch.dtype) -> None:
    reason = _backends.why_not(backend, "coupling", torch.device(device), dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _make_inputs(shape, mask, scale, dtype, device, generator):
    """``x`` (non-contiguous), and ``(h_s, h_t)`` as strided views of one conditioner output ``h``."""
    batch, channels = shape[0], shape[1]
    param_channels = channels // 2 if mask == "channel" else channels
    # x is a transposed (images) or strided (vectors) view of a bigger tensor.
    if len(shape) == 4:
        x = torch.randn(batch, channels, shape[3], shape[2], generator=generator).transpose(2, 3)
    else:
        x = torch.randn(batch, 2 * channels, generator=generator)[:, ::2]
    h = torch.randn(batch, 2 * param_channels, *shape[2:], generator=generator)
    x, h = x.to(device=device, dtype=dtype), h.to(device=device, dtype=dtype)
    return x, h


def _split(h: torch.Tensor, scale: str):
    return (None, h[:, 0::2]) if scale == "additive" else (h[:, 1::2], h[:, 0::2])


def _run(x, h, mask, scale, flip, inverse, grad_y, grad_logdet):
    """Forward and every gradient: ``(y, logdet, ∂/∂x, ∂/∂h)``; ``∂/∂h`` covers ``h_s`` and ``h_t`` at once."""
    x = x.detach().requires_grad_(True)
    h = h.detach().requires_grad_(True)
    raw_scale, shift = _split(h, scale)
    if scale == "additive":
        y, logdet = additive_coupling(x, shift, mask=mask, flip=flip, inverse=inverse)
    else:
        y, logdet = affine_coupling(x, raw_scale, shift, mask=mask, scale=scale, flip=flip, inverse=inverse)
    # The additive coupling's log-determinant is the constant 0: the plain reference leaves it out of the graph.
    pairs = [(out, g.to(out.dtype)) for out, g in ((y, grad_y), (logdet, grad_logdet)) if out.requires_grad]
    grad_x, grad_h = torch.autograd.grad([out for out, _ in pairs], (x, h), [g for _, g in pairs])
    return y, logdet, grad_x, grad_h


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape,mask", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("scale", SCALES)
def test_matches_float64_reference(device, backend, dtype, shape, mask, scale):
    _use(backend, device, dtype)
    generator = torch.Generator().manual_seed(hash((shape, mask, scale)) % 2**31)
    for flip, inverse in DIRECTIONS:
        x, h = _make_inputs(shape, mask, scale, dtype, device, generator)
        grad_y = torch.randn(x.shape, generator=generator).to(device)
        grad_logdet = torch.randn(x.shape[0], generator=generator).to(device)
        with fastflow.set_backend("reference"):
            truth = _run(x.double(), h.double(), mask, scale, flip, inverse, grad_y, grad_logdet)
            low = _run(x, h, mask, scale, flip, inverse, grad_y, grad_logdet)
        with fastflow.set_backend(backend):
            fast = _run(x, h, mask, scale, flip, inverse, grad_y, grad_logdet)
        y, logdet = fast[0], fast[1]
        assert y.dtype == dtype and y.shape == x.shape
        assert logdet.shape == (x.shape[0],)
        assert logdet.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        for name, value, value_low, value64 in zip(("y", "logdet", "grad_x", "grad_h"), fast, low, truth, strict=False):
            assert_close_to_reference(f"{name} flip={flip} inverse={inverse}", value, value_low, value64, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_inverse_undoes_forward(backend, mask):
    _use(backend, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(0)
    x, h = _make_inputs((4, 6, 6, 5), mask, "sigmoid", torch.float32, "cpu", generator)
    raw_scale, shift = _split(h, "sigmoid")
    with fastflow.set_backend(backend):
        y, logdet = affine_coupling(x, raw_scale, shift, mask=mask, scale="exp")
        x_back, logdet_back = affine_coupling(y, raw_scale, shift, mask=mask, scale="exp", inverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_back, -logdet, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mask,scale,flip,inverse", list(itertools.product(
    ["channel", "checkerboard"], ["sigmoid", "exp"], [False, True], [False, True])))
def test_gradcheck_float64(backend, mask, scale, flip, inverse):
    _use(backend, "cpu", torch.float64)
    generator = torch.Generator().manual_seed(1)
    x, h = _make_inputs((2, 4, 3, 3), mask, scale, torch.float64, "cpu", generator)

    def fn(x, h):
        raw_scale, shift = _split(h, scale)
        return affine_coupling(x, raw_scale, shift, mask=mask, scale=scale, flip=flip, inverse=inverse)

    with fastflow.set_backend(backend):
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(), h.requires_grad_()))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("scale", [0, 1, 2])
def test_opcheck(backend, scale):
    _use(backend, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, 3, generator=generator, requires_grad=True)
    h = torch.randn(3, 4, 5, 3, generator=generator)
    raw_scale = None if scale == 2 else h[:, 1::2].detach().requires_grad_(True)
    shift = h[:, 0::2].detach().requires_grad_(True)
    with fastflow.set_backend(backend):
        forward_args = (x, raw_scale, shift, 0, scale, False, True, 2.0)
        torch.library.opcheck(torch.ops.fastflow.coupling_fwd.default, forward_args)
        if scale != 2:
            grad_y, grad_logdet = torch.randn(3, 4, 5, 3), torch.randn(3)
            torch.library.opcheck(
                torch.ops.fastflow.coupling_bwd.default,
                (grad_y, grad_logdet, x.detach(), raw_scale.detach(), 0, scale, True, False, 2.0),
            )


def test_torch_compile_matches_eager():
    generator = torch.Generator().manual_seed(3)
    x, h = _make_inputs((2, 4, 4, 4), "channel", "sigmoid", torch.float32, "cpu", generator)

    def step(x, h):
        y, logdet = affine_coupling(x, h[:, 1::2], h[:, 0::2])
        return (y * y).sum() - logdet.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x.requires_grad_(True)
    h.requires_grad_(True)
    eager_loss = step(x, h)
    eager_grads = torch.autograd.grad(eager_loss, (x, h))
    compiled_loss = compiled(x, h)
    compiled_grads = torch.autograd.grad(compiled_loss, (x, h))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads, strict=False):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "backend,device",
    [
        ("cpu", "cpu"),
        pytest.param("triton", "cuda", marks=pytest.mark.gpu),
        pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
    ],
)
def test_fast_path_makes_no_copies(backend, device):
    """The fused forward reads the conditioner's output in place: no cat, chunk copy or contiguous().

    (Triton's CPU interpreter copies tensors to host arrays itself, so Triton is checked on a GPU only.)
    """
    _use(backend, device, torch.float32)
    generator = torch.Generator().manual_seed(4)
    x, h = _make_inputs((2, 6, 4, 4), "channel", "sigmoid", torch.float32, device, generator)
    with fastflow.set_backend(backend), torch.profiler.profile() as profile:
        affine_coupling(x, h[:, 1::2], h[:, 0::2])
    names = {event.name for event in profile.events()}
    assert not names & {"aten::cat", "aten::copy_", "aten::clone", "aten::contiguous"}, sorted(names)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError / TypeError naming the argument.


def test_odd_channel_count_for_channel_split():
    x = torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match="x: mask='channel'.*even"):
        affine_coupling(x, torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))


def test_wrong_ndim():
    with pytest.raises(ValueError, match=r"x must be \[B, C, H, W\] or \[B, D\]"):
        affine_coupling(torch.randn(2, 4, 4), torch.randn(2, 2, 4), torch.randn(2, 2, 4))


def test_wrong_conditioner_output_shape():
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match=r"raw_scale must have shape \(2, 2, 4, 4\)"):
        affine_coupling(x, torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="shift must have shape"):
        additive_coupling(x, torch.randn(2, 2, 4, 3))


def test_tensors_on_different_devices():
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="shift is on meta but x is on cpu"):
        affine_coupling(x, torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4, device="meta"))


def test_mismatched_dtypes_and_non_tensors():
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(TypeError, match="raw_scale has dtype torch.float64"):
        affine_coupling(x, torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        affine_coupling(x.long(), torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(TypeError, match="shift must be a torch.Tensor"):
        affine_coupling(x, torch.randn(2, 2, 4, 4), 0.5)


def test_unknown_mask_and_scale():
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="mask must be one of"):
        affine_coupling(x, torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), mask="stripes")
    with pytest.raises(ValueError, match="scale must be one of"):
        affine_coupling(x, torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), scale="softplus")


def test_reference_backward_formula_matches_autograd():
    """``reference.affine_coupling_backward`` (the kernels' specification) equals autograd of the reference."""
    generator = torch.Generator().manual_seed(5)
    for mask, scale, flip, inverse in itertools.product(
        ["channel", "checkerboard"], ["sigmoid", "exp"], [False, True], [False, True]
    ):
        x, h = _make_inputs((2, 4, 3, 5), mask, scale, torch.float64, "cpu", generator)
        raw_scale, shift = (t.detach().requires_grad_(True) for t in _split(h, scale))
        x.requires_grad_(True)
        out, logdet = reference.affine_coupling(
            x, raw_scale, shift, mask=mask, scale=scale, flip=flip, inverse=inverse
        )
        grad_y = torch.randn(out.shape, generator=generator, dtype=torch.float64)
        grad_logdet = torch.randn(2, generator=generator, dtype=torch.float64)
        expected = torch.autograd.grad((out, logdet), (x, raw_scale, shift), (grad_y, grad_logdet))
        z = out.detach() if inverse else x.detach()
        got = reference.affine_coupling_backward(
            grad_y, grad_logdet, z, raw_scale.detach(), mask=mask, scale=scale, flip=flip, inverse=inverse
        )
        for a, b in zip(got, expected, strict=False):
            torch.testing.assert_close(a, b)
