"""Every bad value given to the Python API is a clear ValueError/TypeError (issue 9, DESIGN.md "Bad input").

One table of misuses — the fused op's ``perm``/``sign_s``, size arguments of every layer and model, integer tensors
given to flow layers, a non-finite ActNorm initialisation batch, images out of range, sampling temperatures and
sample sizes — each with the exception type and a pattern of its message that names the argument; then the
positive side of the same checks (shapes of ``sample``, recovery after a refused batch, integer images).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import fastflow.models.quantization as quantization
from fastflow import ops
from fastflow.models import NICE, CouplingFlow, Glow, PixelCNN, RealNVP
from fastflow.nn import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    FlowSequential,
    FlowStep,
    InvConv1x1,
    InvertibleSequential,
    MLPConditioner,
    ResNetConditioner,
    Split,
    Squeeze,
    ZeroConv2d,
)
from fastflow.train.objective import takes_noise

# Tiny models: every case runs in milliseconds.


def _glow(**kwargs) -> Glow:
    return Glow(1, 8, **{"levels": 2, "depth": 1, "hidden_channels": 8, **kwargs})


def _realnvp(**kwargs) -> RealNVP:
    return RealNVP(1, 4, **{"levels": 2, "hidden_channels": 4, "num_blocks": 1, "num_levels": 17, **kwargs})


def _nice(**kwargs) -> NICE:
    return NICE(6, **{"num_couplings": 2, "hidden_size": 8, "num_hidden_layers": 1, "levels": 17, **kwargs})


def _coupling_flow(**kwargs) -> CouplingFlow:
    return CouplingFlow(1, 4, **{"num_couplings": 2, "hidden_channels": 4, "levels": 17, **kwargs})


def _pixelcnn(**kwargs) -> PixelCNN:
    return PixelCNN(1, **{"levels": 17, "hidden_channels": 4, "num_layers": 1, "image_size": 4, **kwargs})


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "glow": _glow, "realnvp": _realnvp, "nice": _nice, "coupling_flow": _coupling_flow, "pixelcnn": _pixelcnn,
}
IMAGE_SHAPE = {"glow": (2, 1, 8, 8), "realnvp": (2, 1, 4, 4), "nice": (2, 6), "coupling_flow": (2, 1, 4, 4),
               "pixelcnn": (2, 1, 4, 4)}


def _op_args(channels: int = 4):
    torch.manual_seed(0)
    x = torch.randn(2, channels, 3, 3)
    lower, upper = torch.randn(channels, channels) * 0.1, torch.randn(channels, channels) * 0.1
    return (x, None, None, lower, upper, torch.zeros(channels))


def _op(perm=None, sign_s=None):
    """The fused op with a bad ``perm`` or ``sign_s`` (the other one valid)."""
    perm = torch.arange(4) if perm is None else perm
    sign_s = torch.tensor([1.0, -1.0, 1.0, -1.0]) if sign_s is None else sign_s
    return lambda: ops.actnorm_invconv(*_op_args(), perm=perm, sign_s=sign_s)


def _load(module: torch.nn.Module, key: str, value: torch.Tensor):
    def load():
        state = module.state_dict()
        state[key] = value
        module.load_state_dict(state)

    return load


def _assign(module: torch.nn.Module, name: str, value: torch.Tensor):
    return lambda: setattr(module, name, value)


def _nan_batch(shape=(4, 3, 2, 2), value=float("nan")) -> torch.Tensor:
    x = torch.randn(shape)
    x.view(-1)[1] = value
    return x


def _full(shape, value, dtype=None) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


FLOAT_X = r"x must be a floating-point tensor, got torch\.int64; convert with x\.float\(\)"
FLOAT_Y = r"y must be a floating-point tensor, got torch\.int64; convert with y\.float\(\)"
# (layer builder, integer input shape): every flow layer and container.
FLOW_LAYERS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "actnorm": (lambda: ActNorm(4), (2, 4, 2, 2)),
    "actnorm-vector": (lambda: ActNorm(4), (2, 4)),
    "invconv-lu": (lambda: InvConv1x1(4), (2, 4, 2, 2)),
    "invconv-plain": (lambda: InvConv1x1(4, lu=False), (2, 4, 2, 2)),
    "affine": (lambda: AffineCoupling(4, hidden_channels=4), (2, 4, 2, 2)),
    "affine-vector": (lambda: AffineCoupling(4, hidden_channels=4, spatial=False), (2, 4)),
    "additive": (lambda: AdditiveCoupling(4, hidden_channels=4), (2, 4, 2, 2)),
    "flowstep": (lambda: FlowStep(4, hidden_channels=4), (2, 4, 2, 2)),
    "squeeze": (Squeeze, (2, 4, 2, 2)),
    "split": (lambda: Split(4), (2, 4, 2, 2)),
    "flow-sequential": (lambda: FlowSequential(Squeeze()), (2, 4, 2, 2)),
    "invertible-sequential": (lambda: InvertibleSequential(Squeeze(), memory_efficient=True), (2, 4, 2, 2)),
}

CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # 1. The fused op's perm and sign_s, and the layers' buffers that feed it.
    ("op-perm-duplicate", _op(perm=torch.tensor([0, 0, 2, 3])), ValueError,
     r"perm must be a permutation of 0\.\.3 .*got \[0, 0, 2, 3\]: 0 appears more than once and 1 never"),
    ("op-perm-out-of-range", _op(perm=torch.tensor([0, 1, 2, 4])), ValueError,
     r"perm must be a permutation of 0\.\.3 .*4 is out of range for 4 channels"),
    ("op-perm-negative", _op(perm=torch.tensor([0, 1, 2, -1])), ValueError, r"perm .*-1 is out of range"),
    ("op-perm-wrong-length", _op(perm=torch.arange(3)), ValueError, r"perm must have shape \(4,\) .*got \(3,\)"),
    ("op-perm-float", _op(perm=torch.arange(4.0)), TypeError, r"perm must be an integer tensor .*got torch\.float32"),
    ("op-sign-half", _op(sign_s=torch.tensor([1.0, -1.0, 0.5, 1.0])), ValueError,
     r"sign_s must hold only -1 and \+1 .*0\.5 at index 2"),
    ("op-sign-zero", _op(sign_s=torch.tensor([1.0, 0.0, 1.0, 1.0])), ValueError, r"sign_s must hold only -1 and \+1"),
    ("op-sign-nan", _op(sign_s=torch.tensor([1.0, 1.0, 1.0, math.nan])), ValueError, r"sign_s .*nan at index 3"),
    ("op-sign-bool", _op(sign_s=torch.ones(4, dtype=torch.bool)), TypeError, r"sign_s must be a real tensor"),
    ("invconv-load-perm", _load(InvConv1x1(4), "perm", torch.tensor([1, 1, 2, 3])), ValueError,
     r"perm must be a permutation of 0\.\.3"),
    ("invconv-load-perm-float", _load(InvConv1x1(4), "perm", torch.arange(4.0)), TypeError,
     r"perm must be an integer tensor"),
    ("invconv-load-sign", _load(InvConv1x1(4), "sign_s", torch.tensor([1.0, 2.0, 1.0, 1.0])), ValueError,
     r"sign_s must hold only -1 and \+1 .*2\.0 at index 1"),
    ("invconv-assign-perm", _assign(InvConv1x1(4), "perm", torch.tensor([0, 1, 2, 9])), ValueError,
     r"perm .*9 is out of range"),
    ("invconv-assign-perm-length", _assign(InvConv1x1(4), "perm", torch.arange(5)), ValueError,
     r"perm must have shape \(4,\)"),
    ("flowstep-load-sign", _load(FlowStep(4, hidden_channels=4), "invconv.sign_s", torch.tensor([1.0, -1, 3, 1])),
     ValueError, r"invconv\.sign_s must hold only -1 and \+1"),
    ("glow-load-perm", _load(_glow(), "levels.0.1.invconv.perm", torch.zeros(4, dtype=torch.int64)), ValueError,
     r"levels\.0\.1\.invconv\.perm must be a permutation of 0\.\.3"),
    # 2. Size arguments: a ValueError for a bad value, a TypeError for a float or a bool.
    ("actnorm-channels-0", lambda: ActNorm(0), ValueError, r"num_channels must be a positive int, got 0"),
    ("invconv-channels-float", lambda: InvConv1x1(4.0), TypeError, r"num_channels must be an int, got float 4\.0"),
    ("affine-hidden-0", lambda: AffineCoupling(4, hidden_channels=0), ValueError,
     r"hidden_channels must be a positive int, got 0"),
    ("affine-hidden-float", lambda: AffineCoupling(4, hidden_channels=64.0), TypeError,
     r"hidden_channels must be an int, got float 64\.0"),
    ("affine-hidden-bool", lambda: AffineCoupling(4, hidden_channels=True), TypeError,
     r"hidden_channels must be an int, got bool True"),
    ("affine-cond-negative", lambda: AffineCoupling(4, cond_channels=-1), ValueError,
     r"cond_channels must be an int >= 0, got -1"),
    ("additive-hidden-negative", lambda: AdditiveCoupling(4, hidden_channels=-8), ValueError,
     r"hidden_channels must be a positive int, got -8"),
    ("flowstep-hidden-0", lambda: FlowStep(4, hidden_channels=0), ValueError,
     r"hidden_channels must be a positive int"),
    ("split-odd", lambda: Split(3), ValueError, r"num_channels must be even .*got 3"),
    ("split-channels-float", lambda: Split(4.0), TypeError, r"num_channels must be an int"),
    ("mlp-layers-0", lambda: MLPConditioner(4, 4, num_hidden_layers=0), ValueError,
     r"num_hidden_layers must be a positive int, got 0"),
    ("mlp-hidden-float", lambda: MLPConditioner(4, 4, hidden_features=8.0), TypeError,
     r"hidden_features must be an int"),
    ("resnet-blocks-0", lambda: ResNetConditioner(2, 4, num_blocks=0), ValueError,
     r"num_blocks must be a positive int, got 0"),
    ("resnet-hidden-0", lambda: ResNetConditioner(2, 4, hidden_channels=0), ValueError,
     r"hidden_channels must be a positive int"),
    ("zeroconv-kernel-even", lambda: ZeroConv2d(2, 4, kernel_size=2), ValueError, r"kernel_size must be odd"),
    ("glow-depth-0", lambda: _glow(depth=0), ValueError, r"depth must be a positive int, got 0"),
    ("glow-levels-0", lambda: _glow(levels=0), ValueError, r"levels must be a positive int, got 0"),
    ("glow-hidden-0", lambda: _glow(hidden_channels=0), ValueError, r"hidden_channels must be a positive int, got 0"),
    ("glow-hidden-float", lambda: _glow(hidden_channels=8.0), TypeError, r"hidden_channels must be an int, got float"),
    ("glow-depth-bool", lambda: _glow(depth=True), TypeError, r"depth must be an int, got bool"),
    ("glow-in-channels-0", lambda: Glow(0, 8, levels=2, depth=1), ValueError, r"in_channels must be a positive int"),
    ("glow-n-bits-float", lambda: _glow(n_bits=5.0), TypeError, r"n_bits must be an int"),
    ("glow-num-classes-1", lambda: _glow(num_classes=1), ValueError, r"num_classes must be an int >= 2, got 1"),
    ("glow-num-levels-1", lambda: _glow(num_levels=1), ValueError, r"num_levels must be an int >= 2, got 1"),
    ("realnvp-levels-0", lambda: _realnvp(levels=0), ValueError, r"levels must be a positive int, got 0"),
    ("realnvp-hidden-0", lambda: _realnvp(hidden_channels=0), ValueError, r"hidden_channels must be a positive int"),
    ("realnvp-blocks-0", lambda: _realnvp(num_blocks=0), ValueError, r"num_blocks must be a positive int, got 0"),
    ("realnvp-blocks-float", lambda: _realnvp(num_blocks=1.0), TypeError, r"num_blocks must be an int"),
    ("realnvp-alpha", lambda: _realnvp(alpha=0.5), ValueError, r"alpha must lie in \(0\.0, 0\.5\), got 0\.5"),
    ("nice-couplings-0", lambda: _nice(num_couplings=0), ValueError, r"num_couplings must be a positive int, got 0"),
    ("nice-hidden-0", lambda: _nice(hidden_size=0), ValueError, r"hidden_size must be a positive int, got 0"),
    ("nice-hidden-float", lambda: _nice(hidden_size=8.0), TypeError, r"hidden_size must be an int, got float"),
    ("nice-layers-0", lambda: _nice(num_hidden_layers=0), ValueError, r"num_hidden_layers must be a positive int"),
    ("nice-levels-bool", lambda: _nice(levels=True), TypeError, r"levels must be an int, got bool"),
    ("coupling-flow-couplings-1", lambda: _coupling_flow(num_couplings=1), ValueError,
     r"num_couplings must be an int >= 2, got 1"),
    ("coupling-flow-hidden-0", lambda: _coupling_flow(hidden_channels=0), ValueError,
     r"hidden_channels must be a positive int"),
    ("coupling-flow-levels-1", lambda: _coupling_flow(levels=1), ValueError, r"levels must be an int >= 2, got 1"),
    # 3. Integer tensors given to a flow layer's forward / inverse (added below, one per layer and direction).
    # 4. A non-finite ActNorm initialisation batch.
    ("actnorm-init-nan", lambda: ActNorm(3)(_nan_batch()), ValueError,
     r"x: ActNorm's data-dependent initialisation needs a finite first training batch"),
    ("actnorm-init-inf", lambda: ActNorm(3)(_nan_batch(value=math.inf)), ValueError,
     r"x: .*needs a finite .*NaN or infinite values \(1 of its 48 values\)"),
    ("actnorm-vector-init-nan", lambda: ActNorm(3)(_nan_batch((4, 3))), ValueError, r"x: .*needs a finite"),
    ("flowstep-init-nan", lambda: FlowStep(4, hidden_channels=4)(_nan_batch((2, 4, 2, 2))), ValueError,
     r"x: .*needs a finite"),
    ("glow-init-nan-preprocessed", lambda: _glow().encode(_nan_batch((2, 1, 8, 8))), ValueError,
     r"x: .*needs a finite"),
]

for _name, (_build, _shape) in FLOW_LAYERS.items():
    CASES.append((f"{_name}-int-forward", lambda b=_build, s=_shape: b()(torch.ones(s, dtype=torch.int64)),
                  TypeError, FLOAT_X))
    CASES.append((f"{_name}-int-inverse", lambda b=_build, s=_shape: b().inverse(torch.ones(s, dtype=torch.int64)),
                  TypeError, FLOAT_Y))

# 5. Images out of range (every model, every entry point: log_prob, bits_per_dim, forward).
for _model, _levels in (("glow", 256), ("realnvp", 17), ("nice", 17), ("coupling_flow", 17), ("pixelcnn", 17)):
    _s = IMAGE_SHAPE[_model]
    for _method in ("log_prob", "bits_per_dim", "forward"):
        CASES.append((f"{_model}-{_method}-int64-too-big",
                      lambda m=_model, f=_method, s=_s, v=_levels: getattr(MODELS[m](), f)(_full(s, v)),
                      ValueError, rf"x: int64 values must be below levels={_levels} and >= 0 .*got \[{_levels}, "))
    CASES += [
        (f"{_model}-negative-int16", lambda m=_model, s=_s: MODELS[m]().log_prob(_full(s, -1, torch.int16)),
         ValueError, r"x: int16 values must be below levels=\d+ and >= 0 .*got \[-1, -1\]"),
        (f"{_model}-uint8-too-big", lambda m=_model, s=_s: MODELS[m]().log_prob(_full(s, 17, torch.uint8)),
         ValueError, r"x: uint8 values must be below levels") if _levels == 17 else
        (f"{_model}-int32-too-big", lambda m=_model, s=_s: MODELS[m]().log_prob(_full(s, 1000, torch.int32)),
         ValueError, r"x: int32 values must be below levels=256"),
        (f"{_model}-float-above-1", lambda m=_model, s=_s: MODELS[m]().log_prob(_full(s, 1.5)),
         ValueError, r"x: float images must lie in \[0, 1\], got \[1\.5, 1\.5\]"),
        (f"{_model}-float-negative", lambda m=_model, s=_s: MODELS[m]().log_prob(_full(s, -0.25, torch.float64)),
         ValueError, r"x: float images must lie in \[0, 1\]"),
        (f"{_model}-float-nan", lambda m=_model, s=_s: MODELS[m]().log_prob(_nan_batch(s).clamp(0, 1)),
         ValueError, r"x: float images must lie in \[0, 1\], got 1 NaN value"),
        (f"{_model}-complex", lambda m=_model, s=_s: MODELS[m]().log_prob(torch.zeros(s, dtype=torch.complex64)),
         TypeError, r"x must be integer levels or floats in \[0, 1\], got torch\.complex64"),
    ]
CASES += [
    ("glow-n-bits-5-int64-256", lambda: _glow(n_bits=5).log_prob(_full((2, 1, 8, 8), 256)), ValueError,
     r"x: int64 values must be below levels=256"),
    ("glow-num-levels-17-int64", lambda: _glow(num_levels=17).log_prob(_full((2, 1, 8, 8), 17)), ValueError,
     r"x: int64 values must be below levels=17"),
    ("glow-class-logits-nan", lambda: _glow(num_classes=2).class_logits(_nan_batch((2, 1, 8, 8)).clamp(0, 1)),
     ValueError, r"x: float images must lie in \[0, 1\], got 1 NaN"),
]

# 6. Sampling temperatures and 7. sample sizes (every model).
for _model in MODELS:
    for _label, _t in (("nan", math.nan), ("negative", -0.5), ("inf", math.inf)):
        CASES.append((f"{_model}-temperature-{_label}", lambda m=_model, t=_t: MODELS[m]().sample(2, temperature=t),
                      ValueError, r"temperature must be a finite number >= 0, got (nan|-0\.5|inf)"))
    CASES += [
        (f"{_model}-temperature-str", lambda m=_model: MODELS[m]().sample(2, temperature="hot"), TypeError,
         r"temperature must be a number >= 0, got str"),
        (f"{_model}-n-negative", lambda m=_model: MODELS[m]().sample(-1), ValueError,
         r"n must be a non-negative int .*got -1"),
        (f"{_model}-n-bool", lambda m=_model: MODELS[m]().sample(True), TypeError,
         r"n must be a non-negative int .*bool"),
        (f"{_model}-n-float", lambda m=_model: MODELS[m]().sample(2.0), TypeError,
         r"n must be a non-negative int .*float"),
        (f"{_model}-shape-negative", lambda m=_model: MODELS[m]().sample((2, -3)), ValueError,
         r"n must be a non-negative int \(or a shape of them\), got \(2, -3\)"),
        (f"{_model}-shape-of-floats", lambda m=_model: MODELS[m]().sample((2.0,)), TypeError,
         r"n must be a non-negative int or a shape"),
    ]
CASES += [
    ("glow-temperature-per-level-nan", lambda: _glow().sample(2, temperature=[0.7, math.nan]), ValueError,
     r"temperature\[1\] must be a finite number >= 0, got nan"),
    ("glow-temperature-per-level-length", lambda: _glow().sample(2, temperature=[0.7]), ValueError,
     r"temperature must be one number >= 0 or one per level \(2\), got 1 values"),
]



def _train_with(**settings):
    """``fastflow.train.train`` of a tiny flow with one bad setting: refused before the first step."""
    def run():
        from fastflow.data import load
        from fastflow.train import TrainConfig, train

        data = load("digits")
        config = TrainConfig(**{"steps": 2, "batch_size": 16, "out": "/nonexistent/never-written", **settings})
        train(CouplingFlow(1, 8, num_couplings=2, hidden_channels=4, levels=data.levels), data, config,
              progress=False)

    return run


def _evaluate(**kwargs):
    def run():
        from fastflow.train import evaluate

        evaluate(_coupling_flow(), torch.zeros(4, 1, 4, 4), **kwargs)

    return run


CASES += [
    ("train-temperature-nan", _train_with(temperature=math.nan), ValueError,
     r"temperature must be a finite number >= 0, got nan"),
    ("train-temperature-negative", _train_with(temperature=-1.0), ValueError, r"temperature must be a finite number"),
    ("train-batch-size-zero", _train_with(batch_size=0), ValueError, r"batch_size must be a positive int, got 0"),
    ("train-weight-decay-negative", _train_with(weight_decay=-1e-4), ValueError,
     r"weight_decay must be a finite number >= 0, got -0.0001"),
    ("train-lr-decay-unknown", _train_with(lr_decay="linear"), ValueError,
     r"lr_decay must be one of \('none', 'cosine'\), got 'linear'"),
    ("train-steps-float", _train_with(steps=2.5), ValueError, r"steps must be a positive int, got 2.5"),
    ("train-lr-nan", _train_with(lr=math.nan), ValueError, r"lr must be positive, got nan"),
    ("train-grad-clip-zero", _train_with(grad_clip=0.0), ValueError, r"grad_clip must be positive"),
    ("train-ema-one", _train_with(ema=1.0), ValueError, r"ema must be in \(0, 1\) or None"),
    ("train-precision", _train_with(precision="fp16"), ValueError, r"precision must be one of"),
    ("train-resume-and-overwrite", _train_with(resume=True, overwrite=True), ValueError,
     r"resume and overwrite exclude each other"),
    ("evaluate-batch-size-zero", _evaluate(batch_size=0), ValueError, r"batch_size must be a positive int, got 0"),
    ("evaluate-precision", _evaluate(precision="half"), ValueError, r"precision must be one of"),
    ("load-run-weights", lambda: __import__("fastflow").load_run("/nonexistent", weights="ema"), ValueError,
     r"weights must be one of \('averaged', 'raw'\), got 'ema'"),
    ("load-run-missing", lambda: __import__("fastflow").load_run("/nonexistent/run"), ValueError,
     r"checkpoint '/nonexistent/run' does not exist"),
    ("save-checkpoint-object", lambda: __import__("fastflow.train").train.save_checkpoint(
        {"step": 1, "model": object()}, "/nonexistent/x.pt"), TypeError, r"checkpoint state state\['model'\] is a"),
]


@pytest.mark.parametrize(("misuse", "error", "pattern"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_error(misuse: Callable[[], object], error: type[Exception], pattern: str):
    torch.manual_seed(0)
    with pytest.raises(error, match=pattern):
        misuse()


def test_case_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------------
# The positive side.


@pytest.mark.parametrize("name", MODELS)
def test_sample_takes_an_int_or_a_shape(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    event = tuple(IMAGE_SHAPE[name][1:])
    assert model.sample(3).shape == (3, *event)
    assert model.sample((3,)).shape == (3, *event)
    assert model.sample(torch.Size([2])).shape == (2, *event)
    assert model.sample((2, 3), temperature=0.5).shape == (2, 3, *event)
    assert model.sample(0).shape == (0, *event)
    assert model.sample(()).shape == event
    assert model.sample(2, temperature=0).shape == (2, *event)


def test_glow_samples_a_shape_with_labels_shaped_like_it():
    model = _glow(num_classes=3)
    assert model.sample((2, 2), y=torch.tensor([[0, 1], [2, 0]])).shape == (2, 2, 1, 8, 8)


@pytest.mark.parametrize("layer", ["actnorm", "flowstep"])
def test_a_finite_batch_after_a_refused_one_initialises_actnorm(layer):
    torch.manual_seed(0)
    module = ActNorm(4) if layer == "actnorm" else FlowStep(4, hidden_channels=4)
    actnorm = module if layer == "actnorm" else module.actnorm
    with pytest.raises(ValueError, match="needs a finite"):
        module(_nan_batch((8, 4, 3, 3)))
    assert actnorm.needs_init and not bool(actnorm.initialized)
    assert torch.equal(actnorm.log_scale, torch.zeros(4)) and torch.equal(actnorm.bias, torch.zeros(4))
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    module(x)
    assert not actnorm.needs_init and torch.isfinite(actnorm.log_scale).all()
    y, _ = actnorm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
def test_integer_images_in_range_give_the_float_log_prob(name, dtype):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    levels = 256 if name == "glow" else 17
    k = torch.randint(0, levels, IMAGE_SHAPE[name])
    model(k.to(torch.uint8))  # Glow's ActNorm initialisation
    exact = {"noise": False} if takes_noise(model) else {}  # a discrete model (PixelCNN) has no dequantisation
    expected = model.log_prob(k.double() / (levels - 1), **exact)
    torch.testing.assert_close(model.log_prob(k.to(dtype), **exact), expected)
    assert torch.isfinite(expected).all()


def test_glow_reduces_integer_images_of_every_dtype_to_n_bits():
    torch.manual_seed(0)
    model = _glow(n_bits=5).double()
    k = torch.randint(0, 256, (2, 1, 8, 8))
    model(k.to(torch.uint8))
    expected = model.log_prob(k.to(torch.uint8), noise=False)
    torch.testing.assert_close(model.log_prob(k, noise=False), expected)
    torch.testing.assert_close(model.log_prob(k.double() / 255, noise=False), expected)
    torch.testing.assert_close(model.log_prob(torch.full_like(k, 255), noise=False),
                               model.log_prob(torch.full_like(k, 248), noise=False))  # 255 // 8 == 248 // 8


def test_without_a_host_read_out_of_range_pixels_make_the_likelihood_nan(monkeypatch):
    """Where the range cannot be read on the host (a GPU tensor in a training step, torch.compile), the bad
    examples' log-likelihood is NaN (the trainer's non-finite guard stops there), the others' unchanged."""
    torch.manual_seed(0)
    model = _coupling_flow().double()
    x = torch.randint(0, 17, (3, 1, 4, 4))
    expected = model.log_prob(x, noise=False)
    monkeypatch.setattr(quantization, "_host_check", lambda x: False)
    bad = x.clone()
    bad[1, 0, 0, 0] = 17
    got = model.log_prob(bad, noise=False)
    assert torch.isnan(got[1]) and torch.equal(got[[0, 2]], expected[[0, 2]])
    floats = x.double() / 16
    floats[2, 0, 1, 1] = math.nan
    assert torch.isnan(model.log_prob(floats, noise=False)[2])


def test_the_layers_own_buffers_are_not_read_per_call():
    """InvConv1x1 checks perm/sign_s when they change, not per call: a forward reads no value on the host."""
    layer = InvConv1x1(4)
    x = torch.randn(2, 4, 3, 3)
    with torch.profiler.profile() as profile:
        layer(x)
    names = {event.name for event in profile.events()}
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::sort"}, sorted(names)
    state = InvConv1x1(4).state_dict()
    layer.load_state_dict(state)  # a valid state_dict loads
    assert torch.equal(layer.perm, state["perm"])


def test_the_public_op_reads_perm_and_sign_s_once_per_tensor_version(monkeypatch):
    """Passing the same buffers every step costs one host read, not one per call; an in-place edit is seen."""
    import sys

    module = sys.modules["fastflow.ops.actnorm_invconv"]
    reads = []
    check = module.check_perm_and_signs
    monkeypatch.setattr(module, "check_perm_and_signs", lambda *a, **k: (reads.append(1), check(*a, **k))[1])
    channels = 4
    x = torch.randn(2, channels, 3, 3)
    perm, sign_s = torch.arange(channels), torch.ones(channels)
    lower, upper, log_s = torch.eye(channels), torch.zeros(channels, channels), torch.zeros(channels)
    for _ in range(3):
        ops.actnorm_invconv(x, None, None, lower, upper, log_s, perm=perm, sign_s=sign_s)
    assert len(reads) == 1
    perm[0] = 1
    with pytest.raises(ValueError, match="perm must be a permutation"):
        ops.actnorm_invconv(x, None, None, lower, upper, log_s, perm=perm, sign_s=sign_s)
