"""The folded ActNorm + LU weight as one autograd node (``fastflow.ops.lu_fold``): values and gradients equal to
autograd through the reference algebra (``fastflow.reference.actnorm_invconv``), in float64 and float32, with and
without ActNorm, with any subset of the outputs' gradients; and the memory-saving walk's written-out backward."""

from __future__ import annotations

import pytest
import torch

from fastflow.ops import lu_fold
from fastflow.reference import actnorm_invconv as reference


def _params(channels: int, dtype: torch.dtype, actnorm: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: (0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    lower, upper, log_s = make(channels, channels), make(channels, channels), make(channels)
    log_scale, bias = (make(channels), make(channels)) if actnorm else (None, None)
    perm = torch.randperm(channels, generator=g)
    sign_s = torch.where(torch.rand(channels, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    return log_scale, bias, lower, upper, log_s, perm, sign_s


def _reference(log_scale, bias, lower, upper, log_s, perm, sign_s, dtype, batch, pixels):
    weight, shift = reference.folded_weight(log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s,
                                            dtype=dtype)
    return weight, shift, reference.logdet(log_scale, log_s, batch, pixels, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("actnorm", [True, False])
@pytest.mark.parametrize("wanted", [(0, 1, 2), (0,), (1,), (2,), (0, 2)])
def test_fold_equals_autograd_through_the_reference(dtype, actnorm, wanted):
    log_scale, bias, lower, upper, log_s, perm, sign_s = _params(6, dtype, actnorm)
    inputs = [t for t in (log_scale, bias, lower, upper, log_s) if t is not None]
    batch, pixels = 3, 20
    found = lu_fold.folded_weight_and_logdet(log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s,
                                             dtype=dtype, batch=batch, pixels=pixels)
    expected = _reference(log_scale, bias, lower, upper, log_s, perm, sign_s, dtype, batch, pixels)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for f, e in zip(found, expected, strict=True):
        torch.testing.assert_close(f, e, **tol)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(e.shape, generator=g, dtype=torch.float64).to(dtype) for e in expected]
    chosen = [grads[i] for i in wanted]
    got = torch.autograd.grad([found[i] for i in wanted], inputs, chosen, allow_unused=True)
    want = torch.autograd.grad([expected[i] for i in wanted], inputs, chosen, allow_unused=True)
    names = ("log_scale", "bias", "lower", "upper", "log_s")[0 if actnorm else 2:]
    for name, a, b in zip(names, got, want, strict=True):
        if b is None:  # not reached by the chosen outputs (bias: only through the shift)
            assert a is None or torch.count_nonzero(a) == 0, name
        else:
            assert a is not None, name
            torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_fold_backward_matches_the_function():
    """The written-out backward the memory-saving walk calls directly gives the Function's gradients."""
    log_scale, bias, lower, upper, log_s, perm, sign_s = _params(5, torch.float64, True, seed=3)
    weight, shift, w_lu, l_unit, u_prime = lu_fold.fold(log_scale, bias, lower, upper, log_s, perm, sign_s,
                                                        torch.float64)
    assert not weight.requires_grad
    g_w, g_b, g_l = torch.randn(5, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.randn(
        4, dtype=torch.float64)
    direct = lu_fold.fold_backward(g_w, g_b, g_l, 7, weight, w_lu, l_unit, u_prime, perm, log_scale, bias)
    outs = _reference(log_scale, bias, lower, upper, log_s, perm, sign_s, torch.float64, 4, 7)
    want = torch.autograd.grad(outs, [log_scale, bias, lower, upper, log_s], [g_w, g_b, g_l])
    for a, b in zip(direct, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fold_second_derivatives_by_gradgradcheck():
    """A double backward (``create_graph=True``) differentiates the reference algebra, not the written-out product
    (which would hide its dependence on the parameters and give wrong second derivatives silently)."""
    log_scale, bias, lower, upper, log_s, perm, sign_s = _params(4, torch.float64, True, seed=5)

    def fn(log_scale, bias, lower, upper, log_s):
        return lu_fold.folded_weight_and_logdet(log_scale, bias, lower, upper, log_s, perm=perm, sign_s=sign_s,
                                                dtype=torch.float64, batch=2, pixels=3)

    inputs = (log_scale, bias, lower, upper, log_s)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
