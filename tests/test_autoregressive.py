"""Autoregressive models (FVSBN, NADE, MADE, the MAF layer and model, PixelCNN and Gated PixelCNN, CharRNN),
MaskedLinear and MaskedConv2d (issues 10, 11 and 12).

1. The autoregressive property through the Jacobian: the output for dimension ``order[k]`` depends on
   ``x[order[:k]]`` and on nothing else (exact zeros), for every model and mask set; images in raster order with
   R → G → B inside a pixel, and, for the models without a blind spot, on every earlier dimension.
2. Exact normalisation over all ``2^D`` states, and samples whose frequencies match ``exp(log_prob)``.
3. Bad input: one table, each case a ValueError/TypeError naming the argument.
4. MaskedLinear: its state_dict, loading nn.Linear's, zero gradients of masked weights.
5. A few Adam steps lower the NLL of every model on binarized-MNIST-like data.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fastflow.models import FVSBN, MADE, MAF, NADE, CharRNN, PixelCNN
from fastflow.models.registry import build_model
from fastflow.nn import MaskedAutoregressiveFlow, MaskedConv2d, MaskedLinear, MaskedMLP


def _randomize(module: nn.Module, std: float = 0.5, seed: int = 0) -> nn.Module:
    """Random parameters (NADE's zero biases and MAF's zero-initialised last layer would hide dependences)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, std)
    return module


def _made_masks3() -> MADE:
    model = MADE(6, (32,), num_masks=3, seed=4)
    model.next_masks()
    model.next_masks()
    assert model.current_mask == 2
    return model


# --------------------------------------------------------------------------------------------------
# 1. The autoregressive property.


@dataclass(frozen=True)
class ARCase:
    name: str
    build: Callable[[], nn.Module]
    #: outputs ``[..., D]`` of one example ``x [D]`` whose last axis is the dimension the output belongs to.
    outputs: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    binary: bool = True
    #: whether output ``order[k]`` may depend on ``x[order[k]]`` itself (a flow's ``u_i`` does).
    diagonal: bool = False
    #: whether output ``order[k]`` must depend on every one of ``x[order[:k]]`` (False: a convolution's local
    #: receptive field, PixelCNN's blind spot).
    complete: bool = True


def _logits(model, x):
    return model(x[None])[0]


def _shift_and_log_scale(layer, x):
    return torch.stack(layer.shift_and_log_scale(x[None]))[:, 0]


def _flow_output(layer, x):
    return layer(x[None])[0][0]


AR_CASES = [
    ARCase("fvsbn", lambda: FVSBN(6), _logits),
    ARCase("nade", lambda: NADE(6, hidden_size=5), _logits),
    ARCase("made-natural-deep", lambda: MADE(6, (32, 32), natural_ordering=True), _logits),
    ARCase("made-random-order", lambda: MADE(6, (32,), seed=1), _logits),
    ARCase("made-3-masks-resampled", _made_masks3, _logits),
    ARCase("made-direct", lambda: MADE(6, (32,), direct=True, seed=2), _logits),
    ARCase("made-no-hidden", lambda: MADE(6, (), seed=3), _logits),
    ARCase("maf-layer-mu-alpha", lambda: MaskedAutoregressiveFlow(6, (32,), order=[2, 5, 0, 1, 4, 3]),
           _shift_and_log_scale, binary=False),
    ARCase("maf-layer-output", lambda: MaskedAutoregressiveFlow(6, (32, 32)), _flow_output, binary=False,
           diagonal=True),
]
# The MAF model: each layer's μ/α in that layer's order (orders alternate), and a one-layer model's whole flow.
for _k in range(3):
    AR_CASES.append(ARCase(f"maf-model-layer{_k}-mu-alpha",
                           lambda k=_k: MAF(6, num_layers=3, hidden_sizes=(32,)).flow[k],
                           _shift_and_log_scale, binary=False))
AR_CASES.append(ARCase("maf-model-one-layer-flow", lambda: MAF(6, num_layers=1, hidden_sizes=(32,)).flow,
                       _flow_output, binary=False, diagonal=True))


class RasterImage(nn.Module):
    """An image model seen as one over vectors: ``x [D]`` holds the pixels of a ``C × H × W`` image in raster order
    with the colours inside each pixel (``D = H·W·C``, the natural ``order``); ``forward`` returns the outputs of
    each dimension ``[..., D]`` (``outputs_of(module, image) -> [B, G, C, H, W]``: ``G`` outputs per colour)."""

    def __init__(self, module: nn.Module, shape: tuple[int, int, int], outputs_of: Callable, binary: bool = True):
        super().__init__()
        self.module, self.shape, self.outputs_of = module, shape, outputs_of
        self.register_buffer("order", torch.arange(math.prod(shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.shape
        image = x.reshape(x.shape[0], height, width, channels).permute(0, 3, 1, 2)
        out = self.outputs_of(self.module, image)  # [B, G, C, H, W]
        return out.permute(0, 1, 3, 4, 2).reshape(x.shape[0], out.shape[1], -1)


def _conv_outputs(layer, image):
    """A MaskedConv2d's channels, grouped by colour: ``[B, C_out/C, C, H, W]``."""
    y = layer(image)
    colours = layer.data_channels
    return y.reshape(y.shape[0], colours, -1, *y.shape[2:]).transpose(1, 2)


def _pixelcnn_outputs(model, image):
    """PixelCNN's logits of the network input (continuous, so that the Jacobian exists): ``[B, levels, C, H, W]``."""
    logits = model._logits(model.network(image, model._cond(1 if model.num_classes else None, image.shape[0])))
    return logits if logits.dim() == 5 else logits[:, None]


def _image_case(name: str, build: Callable[[], nn.Module], shape, outputs_of, diagonal=False, complete=False):
    return ARCase(name, lambda: RasterImage(build(), shape, outputs_of), _logits, diagonal=diagonal,
                  complete=complete)


# MaskedConv2d: mask A strictly before (raster order, R → G → B), mask B the pixel's own colour and those before too.
for _mask, _colours in itertools.product("AB", (1, 3)):
    AR_CASES.append(_image_case(
        f"masked-conv-{_mask}-{_colours}-colours",
        lambda m=_mask, c=_colours: MaskedConv2d(c, 2 * c, 3, m, c), (_colours, 3, 3), _conv_outputs,
        diagonal=_mask == "B"))
# PixelCNN (its blind spot: not every earlier pixel) and Gated PixelCNN (no blind spot), 1 and 3 colours.
AR_CASES += [
    _image_case("pixelcnn-binary", lambda: PixelCNN(1, levels=2, hidden_channels=4, num_layers=2, kernel_size=3),
                (1, 3, 4), _pixelcnn_outputs),
    _image_case("pixelcnn-3-colours-4-levels",
                lambda: PixelCNN(3, levels=4, hidden_channels=12, num_layers=1, kernel_size=3), (3, 2, 3),
                _pixelcnn_outputs),
    _image_case("gated-pixelcnn-binary",
                lambda: PixelCNN(1, levels=2, hidden_channels=4, num_layers=3, gated=True, kernel_size=3),
                (1, 4, 4), _pixelcnn_outputs, complete=True),
    _image_case("gated-pixelcnn-3-colours-classes",
                lambda: PixelCNN(3, levels=3, hidden_channels=9, num_layers=2, gated=True, num_classes=2,
                                 kernel_size=3),
                (3, 3, 3), _pixelcnn_outputs, complete=True),
]


class Characters(nn.Module):
    """A CharRNN seen as a model of vectors: ``x [T]`` moves each position's input embedding along a fixed direction
    (the tokens are discrete; the embedding is where a continuous change enters), ``forward`` returns the logits of
    each position ``[B, V, T]``; the natural order."""

    def __init__(self, model: CharRNN, length: int):
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.arange(length))
        self.register_buffer("tokens", torch.arange(length) % model.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens.expand(x.shape[0], -1)
        shifted = self.model.embedding(tokens) + x[..., None]
        handle = self.model.embedding.register_forward_hook(lambda module, inputs, output: shifted)
        try:
            logits, _ = self.model(tokens)  # [B, T, V]
        finally:
            handle.remove()
        return logits.transpose(1, 2)


# CharRNN: the logits of position t depend on every earlier character (the recurrence has no blind spot) and on no
# later one, LSTM and RNN.
AR_CASES += [
    ARCase(f"charrnn-{cell}", lambda cell=cell: Characters(CharRNN(4, 5, 2, cell=cell), 6), _logits, binary=False)
    for cell in ("lstm", "rnn")
]


@pytest.mark.parametrize("case", AR_CASES, ids=lambda case: case.name)
def test_autoregressive_jacobian(case):
    module = _randomize(case.build().double())
    order = (module[0] if isinstance(module, nn.Sequential) else module).order.tolist()
    dims = len(order)
    assert sorted(order) == list(range(dims))
    generator = torch.Generator().manual_seed(0)
    depends = torch.zeros(dims, dims, dtype=torch.bool)  # [output dim, input dim], over all points
    for _ in range(4):
        if case.binary:
            x = torch.randint(0, 2, (dims,), generator=generator).double()
        else:
            x = torch.randn(dims, generator=generator, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: case.outputs(module, v), x)
        jacobian = jacobian.reshape(-1, dims, dims)  # [output group, output dim, input dim]
        nonzero = (jacobian != 0).any(0)
        for k, i in enumerate(order):
            allowed = set(order[: k + 1] if case.diagonal else order[:k])
            forbidden = [j for j in range(dims) if j not in allowed]
            assert not nonzero[i, forbidden].any(), f"output {i} (rank {k}) depends on {forbidden}"
        depends |= nonzero
    if not case.complete:
        assert depends.any(1)[order[1:]].all(), "an output after the first depends on nothing"
        return
    for k, i in enumerate(order):
        expected = order[: k + 1] if case.diagonal else order[:k]
        assert depends[i, expected].all(), f"output {i} (rank {k}) ignores some of {expected}"


def test_maf_orders_alternate():
    model = MAF(5, num_layers=3, hidden_sizes=(8,))
    orders = [layer.order.tolist() for layer in model.flow]
    assert orders == [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]


# --------------------------------------------------------------------------------------------------
# 2. Exact normalisation and sampling.

STATES = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float32)
WEIGHTS = torch.tensor([8, 4, 2, 1])
BINARY_MODELS = {
    "fvsbn": lambda: FVSBN(4),
    "nade": lambda: NADE(4, hidden_size=6),
    "made-natural": lambda: MADE(4, (16,), natural_ordering=True),
    "made-random-direct": lambda: MADE(4, (16, 16), direct=True, seed=5),
}


def _check_frequencies(samples: torch.Tensor, probabilities: torch.Tensor) -> None:
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    counts = torch.bincount((samples.long() * WEIGHTS).sum(1), minlength=16).double()
    n = samples.shape[0]
    p = probabilities.double()
    bound = 4 * torch.sqrt(p * (1 - p) / n) + 2 / n
    assert ((counts / n - p).abs() <= bound).all(), (counts / n, p)


@pytest.mark.parametrize("name", BINARY_MODELS)
def test_normalised_and_samples_match(name):
    model = _randomize(BINARY_MODELS[name](), std=1.0)
    log_prob = model.log_prob(STATES)
    assert log_prob.shape == (16,) and log_prob.dtype == torch.float32
    assert abs(log_prob.exp().sum().item() - 1) < 1e-5
    torch.manual_seed(1)
    samples = model.sample(20_000)
    assert samples.shape == (20_000, 4) and samples.dtype == torch.float32
    _check_frequencies(samples, log_prob.exp())


def _nade_by_definition(x, W, c, V, b):
    """NADE's logits straight from the definition, one dimension at a time (float64)."""
    logits = []
    for i in range(x.shape[1]):
        h = torch.sigmoid(c + x[:, :i] @ W[:, :i].t())
        logits.append(h @ V[i] + b[i])
    return torch.stack(logits, 1)


def test_nade_model_is_the_definition():
    """The model (through the fused op, float64) against NADE's formula evaluated one dimension at a time, and its
    samples are the ancestral draws of the formula for the uniforms they came from."""
    torch.manual_seed(0)
    model = _randomize(NADE(6, hidden_size=5), std=1.0).double()
    x = torch.randint(0, 2, (7, 6)).double()
    expected = _nade_by_definition(x, model.W, model.c, model.V, model.b)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model.log_prob(x), (x * expected - torch.nn.functional.softplus(expected)).sum(1))
    torch.manual_seed(3)
    samples = model.sample(7)
    torch.manual_seed(3)
    u = torch.rand(7, 6, dtype=torch.float64)
    probabilities = torch.sigmoid(_nade_by_definition(samples, model.W, model.c, model.V, model.b))
    torch.testing.assert_close(samples, (u < probabilities).double())


def test_made_masks_normalised_and_sampled_per_mask_and_as_ensemble():
    model = _randomize(MADE(4, (16,), num_masks=3, seed=7), std=1.0)
    model.train()
    per_mask = []
    for k in range(3):
        model.set_masks(k)
        log_prob = model.mask_log_prob(STATES)
        assert abs(log_prob.exp().sum().item() - 1) < 1e-5
        torch.manual_seed(10 + k)
        _check_frequencies(model.sample(20_000), log_prob.exp())  # train mode: the current mask set
        assert model.current_mask == k
        per_mask.append(log_prob)
    assert not torch.allclose(per_mask[0], per_mask[1])  # the mask sets differ
    model.eval()
    ensemble = model.log_prob(STATES)
    torch.testing.assert_close(ensemble, torch.stack(per_mask).exp().mean(0).log())
    assert abs(ensemble.exp().sum().item() - 1) < 1e-5
    torch.manual_seed(20)
    _check_frequencies(model.sample(20_000), ensemble.exp())  # eval mode: the mixture
    assert model.current_mask == 2  # evaluation leaves the current mask set as it was


def test_made_training_cycles_masks_deterministically():
    model = MADE(5, (8,), num_masks=3, seed=1)
    model.train()
    x = torch.randint(0, 2, (4, 5)).float()
    seen = []
    for _ in range(4):
        model.log_prob(x)
        seen.append(model.current_mask)
    assert seen == [1, 2, 0, 1]
    orders = []
    for k in range(3):
        model.set_masks(k)
        orders.append(model.order.tolist())
    assert len({tuple(order) for order in orders}) > 1  # order-agnostic: each set has its own order
    # The same seed and index give the same mask set; the state_dict carries the index.
    clone = MADE(5, (8,), num_masks=3, seed=1)
    clone.load_state_dict(model.state_dict())
    assert clone.current_mask == model.current_mask == 2
    torch.testing.assert_close(clone(x), model(x))
    clone.set_masks(0)
    model.set_masks(0)
    for a, b in zip(clone.buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(a, b)
    # A fixed (natural) order changes only the connectivity.
    natural = MADE(5, (8,), num_masks=2, natural_ordering=True)
    natural.next_masks()
    assert natural.order.tolist() == [0, 1, 2, 3, 4]


def test_dtypes_and_input_kinds():
    model = _randomize(MADE(4, (8,)), std=1.0)
    x = STATES[:5]
    expected = model.log_prob(x)
    for other in (x.bool(), x.to(torch.uint8), x.long()):
        torch.testing.assert_close(model.log_prob(other), expected)
    model.double()
    assert model.log_prob(x).dtype == torch.float64 and model(x).dtype == torch.float64
    assert model.sample((2, 3)).shape == (2, 3, 4) and model.sample(0).shape == (0, 4)
    assert model.bits_per_dim(x).shape == (5,)
    nade = NADE(4, hidden_size=3)
    assert torch.equal(nade.sample(8, temperature=0), nade.sample(8, temperature=0))


def test_binary_models_take_no_dequantisation_noise_and_maf_does():
    """The trainer hands ``noise=`` to continuous models only (``"noise" in signature(log_prob)``)."""
    for model in (FVSBN(3), NADE(3, 2), MADE(3, (4,))):
        assert "noise" not in inspect.signature(model.log_prob).parameters
    assert "noise" in inspect.signature(MAF(3, num_layers=1, hidden_sizes=(4,), levels=2).log_prob).parameters


def test_maf_discrete_log_prob_follows_nice_conventions():
    torch.manual_seed(0)
    model = _randomize(MAF(6, num_layers=2, hidden_sizes=(8,), levels=4), std=0.2).double()
    k = torch.randint(0, 4, (3, 6))
    noise = torch.rand(3, 6, dtype=torch.float64)
    z, logdet = model(k, noise)
    expected = -0.5 * (z**2 + math.log(2 * math.pi)).sum(1) + logdet - 6 * math.log(4)
    torch.testing.assert_close(model.log_prob(k, noise), expected)
    torch.testing.assert_close(model.log_prob(k.double() / 3, noise), expected)  # floats k/(L−1) agree
    torch.testing.assert_close(model.bits_per_dim(k, noise), -expected / (6 * math.log(2)))
    torch.testing.assert_close(model.inverse(z), (k + noise) / 4)
    # logdet against the autograd Jacobian of u ↦ z (the logit included)
    u = ((k + noise) / 4)[0]
    jacobian = torch.autograd.functional.jacobian(lambda v: model.encode(v[None])[0][0], u)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian)[1])
    samples = model.sample(5, quantize=True)
    assert samples.shape == (5, 6) and set((samples * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    real = MAF(3, num_layers=2, hidden_sizes=(4,))
    assert real.log_prob(torch.randn(2, 3)).shape == (2,) and real.sample(4).shape == (4, 3)


# --------------------------------------------------------------------------------------------------
# 3. Bad input.


def _call(build, method, *args, **kwargs):
    return lambda: getattr(build(), method)(*args, **kwargs)


def _made() -> MADE:
    return MADE(4, (8,))


BAD_INPUT = [
    # constructors
    ("fvsbn-dim-0", lambda: FVSBN(0), ValueError, "dim must be a positive int"),
    ("fvsbn-dim-float", lambda: FVSBN(4.0), TypeError, "dim must be an int"),
    ("nade-dim-negative", lambda: NADE(-1), ValueError, "dim must be a positive int"),
    ("nade-hidden-0", lambda: NADE(4, hidden_size=0), ValueError, "hidden_size must be a positive int"),
    ("made-hidden-0", lambda: MADE(4, (8, 0)), ValueError, r"hidden_sizes\[1\] must be a positive int"),
    ("made-hidden-string", lambda: MADE(4, "8"), TypeError, "hidden_sizes must be a tuple of positive ints"),
    ("made-num-masks-0", lambda: MADE(4, num_masks=0), ValueError, "num_masks must be a positive int"),
    ("made-direct-not-bool", lambda: MADE(4, direct=1), TypeError, "direct must be a bool"),
    ("made-set-masks-out-of-range", lambda: MADE(4, (8,), num_masks=2).set_masks(2), ValueError,
     "index must be below num_masks=2"),
    ("maf-layers-0", lambda: MAF(4, num_layers=0), ValueError, "num_layers must be a positive int"),
    ("maf-levels-1", lambda: MAF(4, levels=1), ValueError, "levels must be an int >= 2"),
    ("maf-layer-order-not-permutation", lambda: MaskedAutoregressiveFlow(3, (4,), order=[0, 0, 1]), ValueError,
     "order must be a permutation of 0..2"),
    ("masked-mlp-order-floats", lambda: MaskedMLP(3, (4,), order=torch.tensor([0.0, 1.0, 2.0])), TypeError,
     "order must be a permutation"),
    # data given to the Bernoulli models
    ("x-half", _call(_made, "log_prob", torch.full((2, 4), 0.5)), ValueError, r"x must be binary \(0 or 1\)"),
    ("x-two-int", _call(_made, "log_prob", torch.full((2, 4), 2)), ValueError, r"x must be binary \(0 or 1\)"),
    ("x-minus-one", _call(lambda: FVSBN(4), "forward", -torch.ones(2, 4)), ValueError,
     r"x must be binary \(0 or 1\), got 8 other value"),
    ("x-nan", _call(lambda: NADE(4, 3), "log_prob", torch.tensor([[0.0, 1.0, float("nan"), 0.0]])), ValueError,
     r"x must be binary \(0 or 1\), got 1 NaN"),
    ("x-complex", _call(_made, "log_prob", torch.zeros(2, 4, dtype=torch.complex64)), TypeError, "x must be binary"),
    ("x-not-a-tensor", _call(_made, "log_prob", [[0, 1, 0, 1]]), TypeError, "x must be a torch.Tensor"),
    ("x-wrong-width", _call(_made, "log_prob", torch.zeros(2, 5)), ValueError, r"x must be \[B, 4\]"),
    ("x-image-shape", _call(lambda: NADE(4, 3), "log_prob", torch.zeros(2, 1, 2, 2)), ValueError,
     r"x must be \[B, 4\] .*flatten"),
    ("x-one-dim", _call(lambda: FVSBN(4), "forward", torch.zeros(4)), ValueError, r"x must be \[B, 4\]"),
    ("x-wrong-device", _call(_made, "log_prob", torch.zeros(2, 4, device="meta")), ValueError,
     "x is on meta but the model is on cpu"),
    # sampling
    ("sample-n-negative", _call(_made, "sample", -1), ValueError, "n must be a non-negative int"),
    ("sample-n-float", _call(lambda: NADE(4, 3), "sample", 2.5), TypeError, "n must be a non-negative int"),
    ("sample-temperature-negative", _call(lambda: FVSBN(4), "sample", 3, temperature=-1.0), ValueError,
     "temperature must be a finite number >= 0"),
    ("maf-sample-temperature-nan", _call(lambda: MAF(4, num_layers=1, hidden_sizes=(4,)), "sample", 2,
                                         temperature=float("nan")), ValueError, "temperature must be a finite"),
    # the MAF layer and model
    ("maf-layer-integer-x", _call(lambda: MaskedAutoregressiveFlow(3, (4,)), "forward",
                                  torch.zeros(2, 3, dtype=torch.long)), TypeError, "x must be a floating-point tensor"),
    ("maf-layer-wrong-width", _call(lambda: MaskedAutoregressiveFlow(3, (4,)), "inverse", torch.zeros(2, 4)),
     ValueError, r"u must be \[B, 3\]"),
    ("maf-layer-cond", _call(lambda: MaskedAutoregressiveFlow(3, (4,)), "forward", torch.zeros(2, 3),
                             torch.zeros(2, 1)), ValueError, "cond must be None"),
    ("maf-discrete-out-of-range", _call(lambda: MAF(3, num_layers=1, hidden_sizes=(4,), levels=2), "log_prob",
                                        torch.full((2, 3), 2)), ValueError, "x: int64 values must be below levels=2"),
    ("maf-discrete-wrong-width", _call(lambda: MAF(3, num_layers=1, hidden_sizes=(4,), levels=2), "log_prob",
                                       torch.zeros(2, 4)), ValueError, r"x must be \[B, 3\]"),
    # MaskedLinear
    ("masked-linear-mask-shape", lambda: MaskedLinear(3, 2, mask=torch.ones(3, 2)), ValueError,
     r"mask must be \[out_features, in_features\] = \[2, 3\]"),
    ("masked-linear-mask-values", lambda: MaskedLinear(3, 2, mask=torch.full((2, 3), 0.5)), ValueError,
     r"mask must be binary \(0 or 1\)"),
    ("masked-linear-mask-list", lambda: MaskedLinear(3, 2).set_mask([[1, 0, 1], [0, 1, 1]]), TypeError,
     "mask must be a torch.Tensor"),
    ("masked-linear-in-0", lambda: MaskedLinear(0, 2), ValueError, "in_features must be a positive int"),
    # the registry
    ("registry-fvsbn-256-levels", lambda: build_model("fvsbn", (1, 2, 2), 256), ValueError,
     r"fvsbn models binary data \(levels=2"),
    ("registry-made-17-levels", lambda: build_model("made", (1, 2, 2), 17), ValueError,
     r"made models binary data \(levels=2"),
    ("registry-made-hidden-list", lambda: build_model("made", (1, 2, 2), 2, hidden="8,x"), ValueError,
     "hidden must be a positive int or a comma list"),
    ("registry-made-layers-mismatch", lambda: build_model("made", (1, 2, 2), 2, hidden="8,8", layers=3),
     ValueError, r"hidden gives 2 widths \(8, 8\) but layers=3"),
    ("registry-made-masks-0", lambda: build_model("made", (1, 2, 2), 2, masks=0), ValueError,
     "num_masks must be a positive int"),
    ("registry-nade-hidden-0", lambda: build_model("nade", (1, 2, 2), 2, hidden=0), ValueError,
     "hidden_size must be a positive int"),
    ("registry-maf-layers-0", lambda: build_model("maf", (1, 2, 2), 2, layers=0), ValueError,
     "num_layers must be a positive int"),
]


@pytest.mark.parametrize(("name", "call", "error", "pattern"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input(name, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_refused_batch_leaves_masks_alone():
    model = MADE(4, (8,), num_masks=3)
    model.train()
    with pytest.raises(ValueError, match="must be binary"):
        model.log_prob(torch.full((2, 4), 0.5))
    assert model.current_mask == 0


def test_registry_builds():
    made = build_model("made", (1, 2, 3), 2, hidden="8,6", masks=2, natural_ordering=True, direct=True)
    assert isinstance(made, MADE) and made.hidden_sizes == (8, 6) and made.num_masks == 2 and made.dim == 6
    assert build_model("made", (1, 2, 2), 2, hidden=5, layers=3).hidden_sizes == (5, 5, 5)
    assert build_model("nade", (1, 2, 2), 2, hidden=7).hidden_size == 7
    assert build_model("fvsbn", (1, 3, 3), 2).dim == 9
    maf = build_model("maf", (1, 2, 2), 256, layers=2, hidden="6,6")
    assert isinstance(maf, MAF) and len(maf.flow) == 2 and maf.levels == 256


# --------------------------------------------------------------------------------------------------
# 4. MaskedLinear.


def test_masked_linear():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    layer = MaskedLinear(3, 2, mask=mask)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == ["weight", "bias", "mask"]
    assert list(MaskedLinear(3, 2, bias=False).state_dict()) == ["weight", "mask"]
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x), x @ (layer.weight * mask).t() + layer.bias)
    layer(x).square().sum().backward()
    assert (layer.weight.grad[mask == 0] == 0).all() and (layer.weight.grad[mask == 1] != 0).all()
    # A plain nn.Linear state dict loads with strict=False: the weights come, the mask stays.
    plain = nn.Linear(3, 2)
    result = layer.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys == ["mask"] and result.unexpected_keys == []
    torch.testing.assert_close(layer.weight, plain.weight)
    torch.testing.assert_close(layer.mask, mask.float())
    # Ones by default (a plain linear layer); the mask follows the module's dtype.
    default = MaskedLinear(3, 2)
    assert torch.equal(default.mask, torch.ones(2, 3))
    assert default.double().mask.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# 5. Training lowers the NLL.


def _binary_data(n: int = 256, dim: int = 16) -> torch.Tensor:
    """Noisy copies of 4 random binary prototypes (structure a model can learn, like binarized digits)."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randint(0, 2, (4, dim), generator=generator).float()
    x = prototypes[torch.randint(0, 4, (n,), generator=generator)]
    flips = torch.rand(n, dim, generator=generator) < 0.1
    return torch.where(flips, 1 - x, x)


TRAINED = {
    "fvsbn": lambda: FVSBN(16),
    "nade": lambda: NADE(16, hidden_size=16),
    "made": lambda: MADE(16, (32,)),
    "made-2-masks-direct": lambda: MADE(16, (32,), num_masks=2, direct=True),
    "maf": lambda: MAF(16, num_layers=2, hidden_sizes=(32,), levels=2),
}


@pytest.mark.parametrize("name", TRAINED)
def test_adam_lowers_nll(name):
    torch.manual_seed(0)
    model = TRAINED[name]()
    x = _binary_data()
    kwargs = {"noise": False} if isinstance(model, MAF) else {}

    def nll() -> float:
        model.eval()
        with torch.no_grad():
            value = -model.log_prob(x, **kwargs).mean().item()
        model.train()
        return value

    before = nll()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        loss = -model.log_prob(x).mean()
        loss.backward()
        optimizer.step()
    after = nll()
    assert math.isfinite(after) and after < before - 0.5, (before, after)


# --------------------------------------------------------------------------------------------------
# GPU: a training step reads nothing back to the host (MADE's new mask set each step included).

GPU_TRAINED = {
    "fvsbn": lambda: FVSBN(6),
    "made-3-masks-direct": lambda: MADE(6, (16, 16), num_masks=3, direct=True),
    "maf-binary": lambda: MAF(6, num_layers=2, hidden_sizes=(16,), levels=2),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_TRAINED)
def test_training_step_makes_no_host_synchronisation_on_gpu(name):
    model = GPU_TRAINED[name]().cuda().train()
    x = torch.randint(0, 2, (8, 6), dtype=torch.uint8, device="cuda")
    (-model.log_prob(x).mean()).backward()  # warm-up (pinned buffers, kernels)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            (-model.log_prob(x).mean()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    model.eval()
    assert torch.isfinite(model.log_prob(x)).all() and model.sample(3).shape == (3, 6)
