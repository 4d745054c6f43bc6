"""Generic properties of every registered flow layer (``tests/registry.py``), in float64:
invertibility, log-determinant against the autograd Jacobian, gradients reaching every parameter,
``state_dict`` round trip, and the ``[B]`` float32 log-determinant contract in float32."""

from __future__ import annotations

import pytest
import torch

from tests.registry import FLOW_CASES, FlowCase

CASES = pytest.mark.parametrize("case", FLOW_CASES, ids=lambda case: case.name)


def _build(case: FlowCase, seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = case.build().to(dtype)
    # Random parameters: zero-initialised conditioners would make every coupling the identity and hide bugs.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, case.param_std)
    return module


def _inputs(case: FlowCase, dtype=torch.float64, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case.input_shape, generator=generator, dtype=dtype)
    cond = None if case.cond_shape is None else torch.randn(case.cond_shape, generator=generator, dtype=dtype)
    return x, cond


@CASES
def test_invertible(case):
    module = _build(case)
    x, cond = _inputs(case)
    y, logdet = module(x, cond)
    x_back, logdet_back = module.inverse(y, cond)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_back, -logdet, rtol=1e-10, atol=1e-10)


def _jacobian(direction, point: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """``∂f(x)/∂x`` at one example, ``[D, D]``, by one batched backward: the batch holds ``D`` copies of the
    point and row ``i`` of the identity is the output gradient of copy ``i`` (examples are independent)."""
    n = point.numel()
    copies = point.detach().expand(n, *point.shape).clone().requires_grad_(True)
    cond_copies = None if cond is None else cond.expand(n, *cond.shape[1:])
    out = direction(copies, cond_copies)[0].reshape(n, -1)
    (rows,) = torch.autograd.grad(out, copies, torch.eye(n, dtype=out.dtype))
    return rows.reshape(n, n)


@CASES
def test_logdet_matches_autograd_jacobian(case):
    module = _build(case)
    x, cond = _inputs(case)
    y, logdet = module(x, cond)
    y = y.detach()
    _, inverse_logdet = module.inverse(y, cond)
    for b in range(x.shape[0]):
        cond_b = None if cond is None else cond[b : b + 1]
        for direction, point, expected in (
            (module.forward, x[b], logdet[b]),
            (module.inverse, y[b], inverse_logdet[b]),
        ):
            sign, log_abs_det = torch.linalg.slogdet(_jacobian(direction, point, cond_b))
            assert sign != 0
            torch.testing.assert_close(expected, log_abs_det, rtol=1e-9, atol=1e-9)


@CASES
def test_gradients_reach_every_parameter(case):
    module = _build(case)
    x, cond = _inputs(case)
    x.requires_grad_(True)
    y, logdet = module(x, cond)
    (0.5 * (y**2).sum() - logdet.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


@CASES
def test_state_dict_round_trip(case):
    module = _build(case, seed=0)
    clone = _build(case, seed=123)
    clone.load_state_dict(module.state_dict())
    x, cond = _inputs(case)
    for a, b in zip(module(x, cond), clone(x, cond), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@CASES
def test_logdet_contract_in_float32(case):
    module = _build(case, dtype=torch.float32)
    x, cond = _inputs(case, dtype=torch.float32)
    y, logdet = module(x, cond)
    assert y.shape[0] == x.shape[0] and y.numel() == x.numel() and y.dtype == x.dtype
    assert logdet.shape == (x.shape[0],) and logdet.dtype == torch.float32
    x_back, _ = module.inverse(y, cond)
    torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
