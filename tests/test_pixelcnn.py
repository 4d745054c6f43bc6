"""PixelCNN, Gated PixelCNN and MaskedConv2d beyond the generic suites (issue 11).

The dependency structure (raster order, R → G → B, no blind spot for the gated model) is the generic Jacobian test's
(``tests/test_autoregressive.py``), the op's values the generic op suite's (``tests/ops/cases_masked_conv.py``).
Here: the cached sampler gives exactly the naive sampler's images from the same noise (every configuration, with
completion, temperatures and classes); exact normalisation on tiny images and sample frequencies that match it;
``MaskedConv2d`` as a drop-in ``nn.Conv2d``; bad input; and a few training steps.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from fastflow.models import PixelCNN
from fastflow.models.registry import build_model
from fastflow.nn import MaskedConv2d
from fastflow.reference.masked_conv import conv_mask, live_taps
from tests.test_autoregressive import _randomize as _random

CONFIGS = {
    "binary": dict(in_channels=1, levels=2, hidden_channels=8, num_layers=2),
    "4-levels": dict(in_channels=1, levels=4, hidden_channels=8, num_layers=2),
    "3-colours": dict(in_channels=3, levels=4, hidden_channels=12, num_layers=2),
    "gated-binary": dict(in_channels=1, levels=2, hidden_channels=8, num_layers=2, gated=True),
    "gated-3-colours-classes": dict(in_channels=3, levels=3, hidden_channels=9, num_layers=2, gated=True,
                                    num_classes=3),
}


def _model(name: str, size=(5, 4), kernel: int = 5) -> PixelCNN:
    return _random(PixelCNN(**CONFIGS[name], image_size=size, kernel_size=kernel).double())


# --------------------------------------------------------------------------------------------------
# The cached sampler is the naive one.


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
def test_cached_sampler_gives_the_naive_samplers_images(name, temperature):
    model = _model(name)
    channels = model.in_channels
    cond = torch.tensor([0, 2, 1, 1]) if model.num_classes else None
    noise = torch.rand(4, channels, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    naive = model.sample(4, temperature, cond, noise=noise, method="naive")
    cached = model.sample(4, temperature, cond, noise=noise)
    assert torch.equal(naive, cached)
    assert naive.shape == (4, channels, 5, 4)
    levels = naive * (model.levels - 1)
    assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= model.levels - 1
    if temperature:  # not a constant image: the noise decides
        assert len(levels.unique()) > 1


@pytest.mark.parametrize("name", ["binary", "3-colours", "gated-3-colours-classes"])
def test_completion_keeps_the_given_pixels_and_both_samplers_agree(name):
    model = _model(name)
    generator = torch.Generator().manual_seed(3)
    given = torch.randint(0, model.levels, (3, model.in_channels, 5, 4), generator=generator)
    known = torch.zeros(1, 1, 5, 4, dtype=torch.bool)
    known[..., :2, :] = True  # the top two rows given
    known[..., 3, 1] = True  # and a pixel further down, after unknown ones
    noise = torch.rand(3, model.in_channels, 5, 4, generator=generator, dtype=torch.float64)
    cond = 1 if model.num_classes else None
    outputs = [model.sample(3, cond=cond, given=given, known=known, noise=noise, method=m) for m in ("naive", "cached")]
    assert torch.equal(outputs[0], outputs[1])
    levels = outputs[0] * (model.levels - 1)
    full = known.expand_as(given)
    assert torch.equal(levels[full], given[full].double())
    # The unknown pixels are those of the plain sampler with the given pixels in place: a different prefix, in
    # general, a different completion.
    assert not torch.equal(levels, model.sample(3, cond=cond, noise=noise) * (model.levels - 1))


def test_cached_sampler_agrees_in_float32_and_takes_a_shape():
    model = PixelCNN(1, levels=2, hidden_channels=16, num_layers=3, image_size=6).float()
    _random(model, std=0.3)
    noise = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    naive = model.sample(8, noise=noise, method="naive")
    cached = model.sample(8, noise=noise)
    # Different summation orders: a pixel may flip only where the uniform ties its probability to rounding.
    assert (naive != cached).float().mean() < 0.02
    assert model.sample((2, 3)).shape == (2, 3, 1, 6, 6)
    assert model.sample(0).shape == (0, 1, 6, 6)
    assert model.sample(2, size=(3, 7)).shape == (2, 1, 3, 7)


# --------------------------------------------------------------------------------------------------
# Exact normalisation and sampling on tiny images.


def _all_images(channels: int, height: int, width: int, levels: int) -> torch.Tensor:
    dims = channels * height * width
    states = torch.tensor(list(itertools.product(range(levels), repeat=dims)))
    return states.reshape(-1, channels, height, width)


@pytest.mark.parametrize("name,shape,levels", [
    ("binary", (1, 2, 2), 2),
    ("4-levels", (1, 1, 3), 4),
    ("3-colours", (3, 1, 2), 2),
    ("gated-binary", (1, 2, 3), 2),
    ("gated-3-colours-classes", (3, 1, 2), 3),
])
def test_exact_normalisation_and_sample_frequencies(name, shape, levels):
    config = {**CONFIGS[name], "levels": levels}
    model = _random(PixelCNN(**config, image_size=shape[1:], kernel_size=3).double(), std=0.7)
    images = _all_images(*shape, levels)
    cond = 2 if model.num_classes else None
    batch_cond = None if cond is None else torch.full((len(images),), cond)
    p = model.log_prob(images, batch_cond).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    n = 20000
    torch.manual_seed(0)
    samples = (model.sample(n, cond=cond) * (levels - 1)).round().long()
    index = (samples.flatten(1) * levels ** torch.arange(samples[0].numel() - 1, -1, -1)).sum(1)
    counts = torch.bincount(index, minlength=len(images)).double()
    bound = 4 * torch.sqrt(p * (1 - p) / n) + 2 / n
    assert ((counts / n - p).abs() <= bound).all()


def test_log_prob_takes_levels_and_floats_alike():
    model = _model("4-levels")
    k = torch.randint(0, 4, (3, 1, 5, 4), generator=torch.Generator().manual_seed(0))
    by_levels = model.log_prob(k.to(torch.uint8))
    assert torch.equal(by_levels, model.log_prob(k / 3.0))
    assert torch.allclose(model.bits_per_dim(k), -by_levels / (20 * math.log(2)))
    assert model(k).shape == (3, 4, 1, 5, 4)
    assert _model("binary")(k.clamp(max=1)).shape == (3, 1, 5, 4)


# --------------------------------------------------------------------------------------------------
# MaskedConv2d as nn.Conv2d.


@pytest.mark.parametrize("mask_type,data_channels,kernel", [("A", 1, 7), ("B", 3, 3), ("V", 1, (3, 5)), ("A", 3, 1)])
def test_masked_conv2d_is_a_conv2d_with_the_masked_weight(mask_type, data_channels, kernel):
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 6, kernel, mask_type, data_channels)
    plain = nn.Conv2d(3, 6, kernel, padding=tuple(k // 2 for k in layer.kernel_size))
    assert isinstance(layer, nn.Conv2d)
    assert layer.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(layer.state_dict())
    layer.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    y = layer(x)
    with torch.no_grad():
        plain.weight.mul_(layer.mask)
    expected = plain(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert (layer.weight.grad[layer.mask == 0] == 0).all()
    assert (layer.weight.grad[layer.mask == 1] != 0).any()
    assert layer(x[0].detach()).shape == (6, 6, 5)  # unbatched, as nn.Conv2d


def test_masked_conv2d_under_autocast_computes_as_conv2d_does():
    """Under bf16 autocast ``conv2d`` computes in bf16 from float32 weights; MaskedConv2d the same, gradients
    reaching the float32 weights (a custom op is on no autocast list: without its own cast it refused the mix)."""
    torch.manual_seed(0)
    layer = MaskedConv2d(4, 6, 5, "B")
    plain = nn.Conv2d(4, 6, 5, padding=2)
    with torch.no_grad():
        plain.weight.copy_(layer.weight * layer.mask)
        plain.bias.copy_(layer.bias)
    x = torch.randn(2, 4, 7, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, expected = layer(x), plain(x)
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and (layer.weight.grad[layer.mask == 0] == 0).all()


def test_masks_count_the_live_taps():
    assert len(live_taps((7, 7), "A")) == 24 and len(live_taps((7, 7), "B")) == 25
    assert len(live_taps((3, 3), "V")) == 6 and len(live_taps((1, 5), "A")) == 2
    mask = conv_mask(6, 3, (3, 3), "A", 3)
    assert mask[:, :, 1, 1].tolist() == [[0, 0, 0]] * 2 + [[1, 0, 0]] * 2 + [[1, 1, 0]] * 2
    assert mask[:, :, 2].sum() == 0 and mask[:, :, 1, 2].sum() == 0 and mask[:, :, 0].sum() == 6 * 3 * 3


# --------------------------------------------------------------------------------------------------
# Bad input.

BAD = [
    ("conv-even-kernel", lambda: MaskedConv2d(1, 4, 4), ValueError, r"kernel_size must be odd"),
    ("conv-mask-type", lambda: MaskedConv2d(1, 4, 3, "C"), ValueError, r"mask_type must be one of 'A', 'B', 'V'"),
    ("conv-data-channels", lambda: MaskedConv2d(3, 4, 3, "B", 2), ValueError, r"data_channels must be 1"),
    ("conv-not-thirds", lambda: MaskedConv2d(3, 4, 3, "B", 3), ValueError, r"out_channels must be divisible by 3"),
    ("conv-stride", lambda: MaskedConv2d(1, 4, 3, stride=2), ValueError, r"stride must be 1"),
    ("conv-padding", lambda: MaskedConv2d(1, 4, 3, padding=0), ValueError, r"padding must be 'same' or \(1, 1\)"),
    ("conv-1x1-A", lambda: MaskedConv2d(1, 4, 1, "A"), ValueError, r"sees nothing"),
    ("conv-channels", lambda: MaskedConv2d(2, 4, 3)(torch.zeros(1, 3, 4, 4)), ValueError,
     r"x must have 2 channels"),
    ("conv-int-input", lambda: MaskedConv2d(1, 4, 3)(torch.zeros(1, 1, 4, 4, dtype=torch.long)), TypeError,
     r"x must be a floating-point tensor"),
    ("model-channels", lambda: PixelCNN(2), ValueError, r"in_channels must be 1 \(grey\) or 3"),
    ("model-hidden-colours", lambda: PixelCNN(3, hidden_channels=8), ValueError,
     r"hidden_channels must be divisible by 6"),
    ("model-classes-ungated", lambda: PixelCNN(1, num_classes=3), ValueError, r"num_classes needs gated=True"),
    ("model-wrong-channels", lambda: PixelCNN(1, hidden_channels=4, num_layers=1).log_prob(torch.zeros(2, 3, 4, 4)),
     ValueError, r"x must be \[B, 1, H, W\]"),
    ("model-level-too-big", lambda: PixelCNN(1, levels=2, hidden_channels=4, num_layers=1).log_prob(
        torch.full((2, 1, 4, 4), 2)), ValueError, r"x: int64 values must be below levels=2"),
    ("model-between-levels", lambda: PixelCNN(1, levels=2, hidden_channels=4, num_layers=1).log_prob(
        torch.full((2, 1, 4, 4), 0.5)), ValueError, r"x: float images must hold the levels k/1"),
    ("model-cond-missing", lambda: PixelCNN(1, hidden_channels=4, num_layers=1, gated=True, num_classes=2).log_prob(
        torch.zeros(2, 1, 4, 4)), ValueError, r"cond is required"),
    ("model-cond-out-of-range", lambda: PixelCNN(1, hidden_channels=4, num_layers=1, gated=True, num_classes=2)
     .log_prob(torch.zeros(2, 1, 4, 4), torch.tensor([0, 2])), ValueError, r"cond must hold class indices in \[0, 2\)"),
    ("model-cond-unexpected", lambda: PixelCNN(1, hidden_channels=4, num_layers=1).sample(2, cond=1), ValueError,
     r"cond was given but the model has no classes"),
    ("sample-method", lambda: PixelCNN(1, hidden_channels=4, num_layers=1).sample(1, method="fast"), ValueError,
     r"method must be one of 'cached', 'naive'"),
    ("sample-given-without-known", lambda: PixelCNN(1, hidden_channels=4, num_layers=1, image_size=3).sample(
        1, given=torch.zeros(1, 1, 3, 3)), ValueError, r"known is required with given"),
    ("sample-noise-shape", lambda: PixelCNN(1, hidden_channels=4, num_layers=1, image_size=3).sample(
        2, noise=torch.rand(2, 1, 3, 4)), ValueError, r"noise must be a float tensor of uniforms with shape"),
]


@pytest.mark.parametrize("build,error,message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_is_a_clear_error(build, error, message):
    with pytest.raises(error, match=message):
        build()


# --------------------------------------------------------------------------------------------------
# Training.


@pytest.mark.parametrize("gated", [False, True])
def test_a_few_adam_steps_lower_the_nll(gated):
    torch.manual_seed(0)
    model = build_model("pixelcnn", (1, 8, 8), 2, hidden=12, layers=2, gated=gated)
    x = (torch.rand(32, 1, 8, 8) < 0.3).to(torch.uint8)
    x[:, :, :, 3] = 1  # a structure to learn: one bright column
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = -model.log_prob(x).mean()
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 3  # from ~45 nats towards the ~34 of the data's entropy
