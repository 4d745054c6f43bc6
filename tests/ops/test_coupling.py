"""The coupling op beyond the generic op suite (``test_generic.py``, cases in ``cases_coupling.py``): the inverse
undoes the forward on every backend, the fast paths read the conditioner's output in place, the reference's
backward formula equals autograd, and bad input gets a clear error."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.ops import additive_coupling, affine_coupling
from fastflow.reference import coupling as reference
from tests.ops.cases_coupling import conditioner_inputs

BACKENDS = ["reference", "cpu", "triton", "cuda"]


def _use(backend: str, device: str, dtype: torch.dtype) -> None:
    reason = _backends.why_not(backend, "coupling", torch.device(device), dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _make_inputs(shape, mask, scale, dtype, device, generator):
    """``x`` and the conditioner output ``h`` as the generic suite makes them (``cases_coupling.py``)."""
    inputs = conditioner_inputs(shape, mask, torch.device(device), dtype, generator)
    return inputs["x"], inputs["h"]


def _split(h: torch.Tensor, scale: str):
    return (None, h[:, 0::2]) if scale == "additive" else (h[:, 1::2], h[:, 0::2])


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
