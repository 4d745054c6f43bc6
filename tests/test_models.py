"""Models: the discrete likelihood and bits/dim, sampling, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from fastflow.models import CouplingFlow


def _model(levels=17):
    torch.manual_seed(0)
    model = CouplingFlow(1, 4, num_couplings=4, hidden_channels=8, levels=levels).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def test_log_prob_is_prior_plus_logdet_minus_quantisation():
    model = _model()
    x = torch.randint(0, 17, (3, 1, 4, 4), dtype=torch.uint8)
    z, logdet = model(x, noise=False)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    expected = prior + logdet - 16 * math.log(17)
    torch.testing.assert_close(model.log_prob(x, noise=False), expected)
    torch.testing.assert_close(model.bits_per_dim(x, noise=False), -expected / (16 * math.log(2)))


def test_uint8_and_float_images_agree():
    model = _model()
    k = torch.randint(0, 17, (2, 1, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(model.log_prob(k, noise=False), model.log_prob(k.double() / 16, noise=False))


def test_forward_logdet_includes_the_logit():
    """log|det| of images → z, against the autograd Jacobian of u ↦ z (the dequantised input)."""
    model = _model()
    k = torch.randint(0, 17, (1, 1, 4, 4)).double()
    u = (k + 0.5) / 17
    _, logdet = model(k / 16, noise=False)

    def to_z(v):
        y, _ = model._logit(v.view(1, 1, 4, 4))
        return model.flow(y)[0].flatten()

    jacobian = torch.autograd.functional.jacobian(to_z, u.flatten())
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian)[1])


def test_sample_and_inverse():
    model = _model()
    samples = model.sample(5, temperature=0.7)
    assert samples.shape == (5, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1
    k = torch.randint(0, 17, (2, 1, 4, 4)).double()
    z, _ = model(k / 16, noise=False)
    torch.testing.assert_close(model.inverse(z), (k + 0.5) / 17)


def test_bad_input():
    model = _model()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 4, 4\]"):
        model.log_prob(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="float images must lie in"):
        model.log_prob(torch.full((2, 1, 4, 4), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="uint8 values must be below levels=17"):
        model.log_prob(torch.full((2, 1, 4, 4), 200, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        model.sample(-1)
    with pytest.raises(ValueError, match="image_size must be even"):
        CouplingFlow(1, 5)
