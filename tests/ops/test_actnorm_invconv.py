"""The actnorm_invconv op beyond the generic op suite (``test_generic.py``, cases in ``cases_actnorm_invconv.py``):
invertibility in float32, the log-determinant formula against slogdet, the CPU kernel's chunked conversion of
large low-precision inputs, and bad input."""

from __future__ import annotations

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.ops import actnorm_invconv
from fastflow.reference import actnorm_invconv as reference
from tests.numerics import assert_close_to_reference

BACKENDS = ["reference", "cpu", "triton"]
PARAMETERS = ("lower", "upper", "log_s", "log_scale", "bias")


def _use(backend: str, dtype: torch.dtype) -> None:
    reason = _backends.why_not(backend, "actnorm_invconv", torch.device("cpu"), dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _make_params(channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random LU and ActNorm parameters (float64), a random permutation and random signs of ``s``."""

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    return {
        "lower": 0.3 * randn(channels, channels),
        "upper": 0.3 * randn(channels, channels),
        "log_s": 0.2 * randn(channels),
        "log_scale": 0.3 * randn(channels),
        "bias": randn(channels),
        "perm": torch.randperm(channels, generator=generator),
        "sign_s": torch.where(torch.rand(channels, generator=generator) < 0.5, -1.0, 1.0).double(),
    }


def _rotation_params(channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Glow's initialisation: the LU parameters of a random rotation (a well-conditioned weight)."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
    p, lower, upper = torch.linalg.lu(q)
    s = torch.diagonal(upper)
    return {
        "lower": lower,
        "upper": upper,
        "log_s": s.abs().log(),
        "log_scale": 0.3 * torch.randn(channels, generator=generator, dtype=torch.float64),
        "bias": torch.randn(channels, generator=generator, dtype=torch.float64),
        "perm": p.argmax(dim=1),  # P·L·U = Q: row i of Q is row perm[i] of L·U
        "sign_s": s.sign(),
    }


def _run(fn, x, params, dtype, inverse, actnorm, grad_y, grad_logdet):
    """``(y, logdet, {name: gradient})`` of ``fn`` with float parameters in ``dtype``."""
    x = x.detach().requires_grad_(True)
    leaves = {name: params[name].detach().to(dtype).requires_grad_(True) for name in PARAMETERS}
    if not actnorm:
        del leaves["log_scale"], leaves["bias"]
    y, logdet = fn(
        x,
        leaves.get("log_scale"),
        leaves.get("bias"),
        leaves["lower"],
        leaves["upper"],
        leaves["log_s"],
        perm=params["perm"],
        sign_s=params["sign_s"].to(dtype),
        inverse=inverse,
    )
    inputs = [x, *leaves.values()]
    grads = torch.autograd.grad(
        (y, logdet), inputs, (grad_y.to(y.dtype), grad_logdet.to(logdet.dtype)), allow_unused=True
    )
    named = {
        name: torch.zeros_like(value) if grad is None else grad
        for name, value, grad in zip(["x", *leaves], inputs, grads, strict=True)
    }
    return y, logdet, named


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [12, 48])
def test_inverse_undoes_forward(backend, channels):
    """``inverse(forward(x)) = x`` in float32 for a well-conditioned weight (Glow's rotation initialisation:
    a random LU weight of 48 channels has a condition number of ~10³, which float32 cannot invert to 1e-5)."""
    _use(backend, torch.float32)
    generator = torch.Generator().manual_seed(channels)
    params = {k: v.float() if v.is_floating_point() else v for k, v in _rotation_params(channels, generator).items()}
    x = torch.randn(2, channels, 5, 7, generator=generator)
    args = [params[name] for name in ("log_scale", "bias", "lower", "upper", "log_s")]
    with fastflow.set_backend(backend):
        y, logdet = actnorm_invconv(x, *args, perm=params["perm"], sign_s=params["sign_s"])
        x_back, logdet_back = actnorm_invconv(y, *args, perm=params["perm"], sign_s=params["sign_s"], inverse=True)
    error = ((x_back - x).abs().max() / x.abs().max()).item()
    assert error <= 1e-5, f"relative round-trip error {error:.2e}"
    torch.testing.assert_close(logdet_back, -logdet)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_is_slogdet_of_the_folded_weight(backend, inverse):
    """``logdet = ±H·W·log|det(P·L·(U + diag s)·diag(exp(log_scale)))|``: the formula without slogdet is right."""
    _use(backend, torch.float32)
    generator = torch.Generator().manual_seed(6)
    channels, height, width = 5, 3, 4
    params = _make_params(channels, generator)
    w_full = reference.lu_weight(
        params["lower"], params["upper"], params["log_s"], perm=params["perm"], sign_s=params["sign_s"]
    ) @ torch.diag(params["log_scale"].exp())
    expected = height * width * torch.linalg.slogdet(w_full).logabsdet
    x = torch.randn(2, channels, height, width, generator=generator)
    floats = {name: params[name].float() for name in PARAMETERS}
    with fastflow.set_backend(backend):
        _, logdet = actnorm_invconv(
            x, floats["log_scale"], floats["bias"], floats["lower"], floats["upper"], floats["log_s"],
            perm=params["perm"], sign_s=params["sign_s"].float(), inverse=inverse,
        )
    torch.testing.assert_close(logdet.double(), (-expected if inverse else expected).expand(2), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
def test_cpu_kernel_converts_in_chunks(dtype):
    """Low-precision inputs larger than one conversion chunk (several samples per chunk, a partial last one)."""
    _use("cpu", dtype)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(5, 8, 180, 200, generator=generator).to(dtype)
    weight = torch.randn(8, 8, generator=generator)
    bias = torch.randn(8, generator=generator)
    grad_y = torch.randn(x.shape, generator=generator).to(dtype)
    y = torch.ops.fastflow_C.actnorm_invconv_fwd(x, weight, bias)
    grads = torch.ops.fastflow_C.actnorm_invconv_bwd(grad_y, x, weight)
    y64 = reference.channel_mix(x.double(), weight.double(), bias.double())
    y_low = reference.channel_mix(x, weight, bias)
    assert_close_to_reference("y", y, y_low, y64, dtype)
    grads64 = reference.channel_mix_backward(grad_y.double(), x.double(), weight.double())
    grads_low = reference.channel_mix_backward(grad_y, x, weight.to(dtype))
    for name, value, value_low, value64 in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_low, grads64,
                                               strict=True):
        assert_close_to_reference(name, value, value_low, value64, dtype)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError / TypeError naming the argument.


def _valid_args(channels: int = 4):
    generator = torch.Generator().manual_seed(8)
    params = {k: v.float() if v.is_floating_point() else v for k, v in _make_params(channels, generator).items()}
    x = torch.randn(2, channels, 3, 3, generator=generator)
    args = [x] + [params[name] for name in ("log_scale", "bias", "lower", "upper", "log_s")]
    return args, {"perm": params["perm"], "sign_s": params["sign_s"]}


def test_wrong_ndim():
    args, kwargs = _valid_args()
    args[0] = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"x must be \[B, C, H, W\], got 3 dimensions"):
        actnorm_invconv(*args, **kwargs)


def test_wrong_parameter_shapes():
    args, kwargs = _valid_args()
    bad_lower = list(args)
    bad_lower[3] = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"lower must have shape \(4, 4\) for x with 4 channels, got \(4, 3\)"):
        actnorm_invconv(*bad_lower, **kwargs)
    bad_log_s = list(args)
    bad_log_s[5] = torch.randn(5)
    with pytest.raises(ValueError, match=r"log_s must have shape \(4,\) for x with 4 channels, got \(5,\)"):
        actnorm_invconv(*bad_log_s, **kwargs)
    with pytest.raises(ValueError, match=r"perm must have shape \(4,\)"):
        actnorm_invconv(*args, **{**kwargs, "perm": torch.arange(3)})


def test_wrong_dtypes_and_non_tensors():
    args, kwargs = _valid_args()
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        actnorm_invconv(args[0].long(), *args[1:], **kwargs)
    with pytest.raises(TypeError, match="perm must be an integer tensor"):
        actnorm_invconv(*args, **{**kwargs, "perm": kwargs["perm"].float()})
    with pytest.raises(TypeError, match="log_scale must be a torch.Tensor, got float"):
        actnorm_invconv(args[0], 0.5, *args[2:], **kwargs)


def test_tensors_on_different_devices():
    args, kwargs = _valid_args()
    args[3] = args[3].to("meta")
    with pytest.raises(ValueError, match="lower is on meta but x is on cpu"):
        actnorm_invconv(*args, **kwargs)


def test_cpu_kernel_rejects_bad_input():
    """The compiled op checks its own arguments (it is reachable as torch.ops.fastflow_C directly)."""
    _use("cpu", torch.float32)
    op = torch.ops.fastflow_C
    x, weight, bias = torch.randn(2, 4, 3, 3), torch.randn(4, 4), torch.randn(4)
    with pytest.raises(ValueError, match=r"x must be a 4-d \[B, C, H, W\] tensor"):
        op.actnorm_invconv_fwd(x[0], weight, bias)
    with pytest.raises(ValueError, match=r"weight must have shape \[4, 4\]"):
        op.actnorm_invconv_fwd(x, weight[:3], bias)
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        op.actnorm_invconv_fwd(x, weight, torch.randn(5))
    with pytest.raises(TypeError, match="weight must be float32 for x of dtype float32"):
        op.actnorm_invconv_fwd(x, weight.double(), bias)
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64"):
        op.actnorm_invconv_fwd(x.long(), weight, bias)
    with pytest.raises(ValueError, match=r"grad_y must have the shape of x"):
        op.actnorm_invconv_bwd(torch.randn(2, 4, 3, 2), x, weight)
