"""The Triton launchers (``fastflow.kernels``) called directly against the float64 references, on what the
launchers special-case: the coupling's 1-D tiles (vectors, contiguous halves) next to its 2-D ones, tails, the exp
scale's accuracy for small ``|h|`` and the ``expm1`` under it; the fused actnorm_invconv backward (``C ≤ 64``), its
two-kernel path (more channels), 16-bit dots with the weight rounded like ``conv2d``, and the choice of the float32
dot precision.

Under the interpreter (no GPU: ``tests/conftest.py`` sets ``TRITON_INTERPRET``) the kernels take CPU tensors; with a
GPU they run compiled, on CUDA tensors. Sizes are small: the interpreter is slow.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from fastflow.kernels import _common  # noqa: E402
from fastflow.kernels import actnorm_invconv as mix_kernels  # noqa: E402
from fastflow.kernels import coupling as coupling_kernels  # noqa: E402
from fastflow.kernels.coupling import _expm1  # noqa: E402

from fastflow import _codes  # noqa: E402
from fastflow.reference import actnorm_invconv as mix_reference  # noqa: E402
from fastflow.reference import coupling as coupling_reference  # noqa: E402

if not _common.INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton needs a GPU or its interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

DEVICE = torch.device("cpu" if _common.INTERPRETED else "cuda")
CLAMP = 2.0
# Compiled for a GPU, these are GPU tests (``pytest -m gpu``, the GPU check's selection); interpreted, CPU ones.
pytestmark = [] if _common.INTERPRETED else [pytest.mark.gpu]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on_device(t: torch.Tensor) -> torch.Tensor:
    """The same strided view on the kernels' device (a CPU tensor stays itself)."""
    if t.device == DEVICE:
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=DEVICE).copy_(t)


def _assert_close(name: str, value: torch.Tensor, truth: torch.Tensor, rtol: float, atol: float) -> None:
    torch.testing.assert_close(
        value.detach().cpu().double(), truth.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}"
    )


# --------------------------------------------------------------------------------------------------
# Shared helpers.


def test_common_helpers():
    assert _common.sm_count(torch.device("cpu")) == 1
    configs = _common.autotune_configs([triton.Config({"TILE": 1024}, num_warps=4)] * 2, interpreted={"TILE": 32})
    if _common.INTERPRETED:
        assert [c.kwargs for c in configs] == [{"TILE": 32}]
    else:
        assert len(configs) == 2
        assert _common.sm_count(DEVICE) == torch.cuda.get_device_properties(DEVICE).multi_processor_count


def test_coupling_rejects_unknown_codes():
    x = torch.zeros(1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"mask must be one of 0 \(channel\), 1 \(checkerboard\), got 7"):
        coupling_kernels.coupling_fwd(x, x[:, :1], x[:, :1], 7, _codes.SCALE_EXP, False, False, CLAMP)
    with pytest.raises(ValueError, match=r"scale must be one of .*2 \(additive\), got 5"):
        coupling_kernels.coupling_fwd(x, x[:, :1], x[:, :1], _codes.MASK_CHANNEL, 5, False, False, CLAMP)


# --------------------------------------------------------------------------------------------------
# expm1 and the exp scale for small |h|.


@triton.jit
def _expm1_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < n
    x = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0)
    tl.store(y_ptr + offsets, _expm1(x), mask=in_bounds)


def test_expm1_accuracy():
    """float32 ``_expm1`` against float64 ``expm1``: a few ulps relative from 1e-30 to 40, both signs, across the
    branch point ``|x| = 1`` (on a GPU the error of ``exp`` grows with ``|x|``: its argument is rounded)."""
    magnitudes = torch.cat([
        torch.logspace(-30, 1.6, 500, dtype=torch.float64),
        torch.linspace(0.95, 1.05, 101, dtype=torch.float64),
    ])
    x = torch.cat([magnitudes, -magnitudes[magnitudes < 20], torch.zeros(1, dtype=torch.float64)]).float()
    y = torch.empty_like(x)
    n = x.numel()
    out = _on_device(y)
    _expm1_kernel[(triton.cdiv(n, 256),)](_on_device(x), out, n, BLOCK=256)
    out = out.cpu()
    truth = torch.expm1(x.double())
    eps = torch.finfo(torch.float32).eps
    bound = (4 + 1.5 * x.double().abs()) * eps * truth.abs()
    error = (out.double() - truth).abs()
    worst = int((error / truth.abs().clamp_min(1e-300)).argmax())
    assert (error <= bound).all(), f"expm1({x[worst].item()!r}): relative error {error[worst] / truth[worst].abs():.2e}"
    assert out[x == 0].item() == 0.0


def test_exp_scale_small_h_is_exact_to_float32():
    """``log s = c·tanh(h/c)`` and ``∂L/∂h_s`` at ``|h|`` from 1e-7 to 0.1, where ``1 − exp(−2|a|)`` cancelled:
    at most 1e-6 relative. One transformed element per sample (``[B, 2]`` vectors), so that ``logdet[b]`` is
    ``log s(h_b)`` itself."""
    magnitudes = torch.logspace(-7, -1, 32, dtype=torch.float64)
    h = torch.cat([magnitudes, -magnitudes]).float()[:, None]
    batch = h.shape[0]
    gen = _generator(3)
    x = torch.rand(batch, 2, generator=gen) + 0.5
    shift = torch.randn(batch, 1, generator=gen)
    canonical = [_on_device(t[:, :, None, None]) for t in (x, h, shift)]
    log_s = CLAMP * torch.tanh(h.double() / CLAMP)
    for inverse in (False, True):
        _, logdet = coupling_kernels.coupling_fwd(
            *canonical, _codes.MASK_CHANNEL, _codes.SCALE_EXP, False, inverse, CLAMP
        )
        _assert_close("log s", logdet.cpu() * (-1 if inverse else 1), log_s[:, 0], rtol=1e-6, atol=0.0)
    # Positive g, z and g_logdet: no cancellation in d·(g·z·s + g_ld), so 1e-6 measures the scale terms alone.
    grad_y = torch.rand(batch, 2, generator=gen) + 0.5
    grad_logdet = torch.rand(batch, generator=gen) + 0.5
    _, grad_raw, _ = coupling_kernels.coupling_bwd(
        _on_device(grad_y[:, :, None, None]), _on_device(grad_logdet), canonical[0], canonical[1],
        _codes.MASK_CHANNEL, _codes.SCALE_EXP, False, False, CLAMP,
    )
    _, truth, _ = coupling_reference.affine_coupling_backward(
        grad_y.double(), grad_logdet.double(), x.double(), h.double(), mask="channel", scale="exp", clamp=CLAMP
    )
    _assert_close("grad h_s", grad_raw.view(batch, 1), truth, rtol=1e-6, atol=0.0)


def test_exp_scale_propagates_nan():
    """A NaN ``h_s`` stays NaN through the clamp of ``|a|``: in ``y`` and in its sample's ``log|det J|``."""
    h = torch.tensor([[0.5], [float("nan")], [-3.0]])
    x = torch.ones(3, 2)
    canonical = [_on_device(t[:, :, None, None]) for t in (x, h, torch.zeros(3, 1))]
    y, logdet = coupling_kernels.coupling_fwd(*canonical, _codes.MASK_CHANNEL, _codes.SCALE_EXP, False, False, CLAMP)
    assert torch.isnan(logdet.cpu()).tolist() == [False, True, False]
    assert torch.isnan(y.cpu()[:, 1].flatten()).tolist() == [False, True, False]


# --------------------------------------------------------------------------------------------------
# Coupling layouts: 1-D tiles (FLAT) and 2-D tiles.


def _coupling_case(layout: str, seed: int):
    """``(x, raw_scale, shift, mask, expect_flat)`` in the kernels' canonical 4-d form (``_canonical`` of the op)."""
    gen = _generator(seed)
    if layout == "vector halves":  # [B, D] viewed as [B, D, 1, 1]; h_s, h_t contiguous halves of one output
        x = torch.randn(3, 2 * 75, generator=gen)
        h = torch.randn(3, 2 * 75, generator=gen)
        raw, shift = h.chunk(2, dim=1)
        return x[:, :, None, None], raw[:, :, None, None], shift[:, :, None, None], _codes.MASK_CHANNEL, True
    if layout == "vector interleaved":  # strided h_s/h_t and x: still one dimension
        x = torch.randn(2, 2 * 2 * 37, generator=gen)[:, ::2]
        h = torch.randn(2, 2 * 37, generator=gen)
        return x[:, :, None, None], h[:, 0::2, None, None], h[:, 1::2, None, None], _codes.MASK_CHANNEL, True
    if layout == "image halves":  # Glow's h.chunk(2, 1) of a conditioner output, odd C/2, H, W
        x = torch.randn(2, 6, 5, 7, generator=gen)
        h = torch.randn(2, 6, 5, 7, generator=gen)
        raw, shift = h.chunk(2, dim=1)
        return x, raw, shift, _codes.MASK_CHANNEL, True
    if layout == "vector checkerboard":  # [B, D] viewed as [B, 1, 1, D]: index parity
        x = torch.randn(3, 1, 1, 77, generator=gen)
        h = torch.randn(3, 2, 1, 77, generator=gen)
        return x, h[:, :1], h[:, 1:], _codes.MASK_CHECKERBOARD, True
    if layout == "image interleaved":  # h[:, 0::2]: the channels do not merge with the pixels (2-D tiles)
        x = torch.randn(2, 6, 7, 5, generator=gen).transpose(2, 3)
        h = torch.randn(2, 6, 5, 7, generator=gen)
        return x, h[:, 0::2], h[:, 1::2], _codes.MASK_CHANNEL, False
    if layout == "image checkerboard":
        x = torch.randn(2, 3, 5, 9, generator=gen)
        h = torch.randn(2, 6, 5, 9, generator=gen)
        return x, h[:, :3], h[:, 3:], _codes.MASK_CHECKERBOARD, False
    raise AssertionError(layout)


LAYOUTS = ["vector halves", "vector interleaved", "image halves", "vector checkerboard", "image interleaved",
           "image checkerboard"]
# (scale, flip, inverse): each layout sees both scales, both flips and both directions over the list.
COUPLING_CONFIGS = [
    (_codes.SCALE_EXP, False, False),
    (_codes.SCALE_SIGMOID, True, True),
]


@pytest.mark.parametrize("scale, flip, inverse", COUPLING_CONFIGS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_layouts(layout, scale, flip, inverse):
    x, raw, shift, mask, expect_flat = _coupling_case(layout, seed=LAYOUTS.index(layout))
    sizes, _ = coupling_kernels._layout(x, [x, raw, shift], mask)
    *_, flat, programs = coupling_kernels._launch_shape(sizes, x.shape[0], DEVICE)
    assert flat == expect_flat, f"{layout}: per-sample index space {sizes}"
    mask_name, scale_name = _codes.MASK_NAMES[mask], _codes.SCALE_NAMES[scale]
    options = dict(mask=mask_name, scale=scale_name, flip=flip, inverse=inverse, clamp=CLAMP)

    y, logdet = coupling_kernels.coupling_fwd(
        _on_device(x), _on_device(raw), _on_device(shift), mask, scale, flip, inverse, CLAMP
    )
    y_truth, logdet_truth = coupling_reference.affine_coupling(x.double(), raw.double(), shift.double(), **options)
    _assert_close("y", y, y_truth, rtol=1e-5, atol=1e-5)
    _assert_close("logdet", logdet, logdet_truth, rtol=1e-5, atol=1e-5)

    gen = _generator(100 + LAYOUTS.index(layout))
    grad_y = torch.randn(x.shape, generator=gen)
    grad_logdet = torch.randn(x.shape[0], generator=gen)
    grads = coupling_kernels.coupling_bwd(
        _on_device(grad_y), _on_device(grad_logdet), _on_device(x), _on_device(raw), mask, scale, flip, inverse, CLAMP
    )
    truths = coupling_reference.affine_coupling_backward(
        grad_y.double(), grad_logdet.double(), x.double(), raw.double(), **options
    )
    for name, grad, truth in zip(("grad x", "grad h_s", "grad h_t"), grads, truths, strict=True):
        _assert_close(name, grad, truth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["vector halves", "image interleaved"])
def test_coupling_programs_past_the_tiles(layout, monkeypatch):
    """More programs per sample than tiles: the idle ones write 0 to the partial sums of ``log s``."""
    monkeypatch.setattr(coupling_kernels, "_programs_per_sample", lambda *args: 9)
    x, raw, shift, mask, _ = _coupling_case(layout, seed=12)
    y, logdet = coupling_kernels.coupling_fwd(
        _on_device(x), _on_device(raw), _on_device(shift), mask, _codes.SCALE_SIGMOID, False, False, CLAMP
    )
    y_truth, logdet_truth = coupling_reference.affine_coupling(x.double(), raw.double(), shift.double())
    _assert_close("y", y, y_truth, rtol=1e-5, atol=1e-5)
    _assert_close("logdet", logdet, logdet_truth, rtol=1e-5, atol=1e-5)


def test_coupling_additive_flat():
    x, _, shift, mask, _ = _coupling_case("vector halves", seed=11)
    y, logdet = coupling_kernels.coupling_fwd(
        _on_device(x), None, _on_device(shift), mask, _codes.SCALE_ADDITIVE, False, True, CLAMP
    )
    y_truth, _ = coupling_reference.additive_coupling(x.double(), shift.double(), mask="channel", inverse=True)
    _assert_close("y", y, y_truth, rtol=1e-6, atol=1e-6)
    assert (logdet.cpu() == 0).all()


# --------------------------------------------------------------------------------------------------
# actnorm_invconv: the fused backward (C ≤ 64), the two-kernel path, 16-bit dots.


class _Forbidden:
    """Stands in for a kernel that the path under test must not launch."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        raise AssertionError(f"{self.name} launched")


@pytest.fixture
def ieee_float32(monkeypatch):
    """float32 dots in IEEE (on a GPU, TF32 would be chosen from 64 channels on: not what these bounds measure)."""
    monkeypatch.setattr(mix_kernels, "cudnn_conv_allows_tf32", lambda: False)


def _make_x(shape, layout: str, gen: torch.Generator) -> torch.Tensor:
    batch, channels, height, width = shape
    if layout == "transposed":
        return torch.randn(batch, channels, width, height, generator=gen).transpose(2, 3)
    x = torch.randn(shape, generator=gen)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _check_mix(shape, layout, dtype, grad_dtype=None, seed=0):
    """Forward and backward launchers against ``channel_mix`` / ``channel_mix_backward`` in float64."""
    gen = _generator(seed)
    channels = shape[1]
    x = _make_x(shape, layout, gen).to(dtype)
    weight = torch.randn(channels, channels, generator=gen) / max(1, channels) ** 0.5
    bias = torch.randn(channels, generator=gen)
    grad_y = torch.randn(shape, generator=gen).to(grad_dtype or dtype)
    # The weight as the dots see it: rounded to 16-bit operands' dtype, as conv2d(x, W.to(x.dtype)) does.
    w_fwd = weight.to(dtype).double() if dtype != torch.float32 else weight.double()
    w_bwd = weight.to(grad_y.dtype).double() if grad_y.dtype != torch.float32 else weight.double()

    y = mix_kernels.actnorm_invconv_fwd(_on_device(x), _on_device(weight), _on_device(bias))
    grad_x, grad_w, grad_b = mix_kernels.actnorm_invconv_bwd(_on_device(grad_y), _on_device(x), _on_device(weight))
    assert y.is_contiguous() and grad_x.is_contiguous()
    assert (y.dtype, grad_x.dtype, grad_w.dtype, grad_b.dtype) == (dtype, dtype, torch.float32, torch.float32)

    y_truth = mix_reference.channel_mix(x.double(), w_fwd, bias.double())
    gx_truth, _, _ = mix_reference.channel_mix_backward(grad_y.double(), x.double(), w_bwd)
    _, gw_truth, gb_truth = mix_reference.channel_mix_backward(grad_y.double(), x.double(), weight.double())
    low = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    # Outputs in the input dtype: its rounding; the sums (float32 accumulation of exact products): float32's.
    _assert_close("y", y, y_truth, rtol=low[dtype], atol=low[dtype])
    _assert_close("grad x", grad_x, gx_truth, rtol=low[dtype], atol=low[dtype])
    _assert_close("grad weight", grad_w, gw_truth, rtol=1e-5, atol=1e-5 * max(1.0, gw_truth.abs().max().item()))
    _assert_close("grad bias", grad_b, gb_truth, rtol=1e-5, atol=1e-5 * max(1.0, gb_truth.abs().max().item()))


# (B, C, H, W), layout: C = 1, 5, 17, 48 (one channel past a block, Glow's 4×4×48 level); 35 pixels = three pixel
# blocks of the interpreter's 16, several splits; an empty batch; transposed and channels-last views.
FUSED_CASES = [
    ((3, 1, 5, 7), "contiguous"),
    ((2, 5, 5, 7), "transposed"),
    ((2, 17, 5, 7), "channels_last"),
    ((2, 48, 5, 7), "contiguous"),
    ((0, 5, 3, 3), "contiguous"),
]


@pytest.mark.parametrize("shape, layout", FUSED_CASES)
def test_actnorm_fused_backward(shape, layout, monkeypatch, ieee_float32):
    monkeypatch.setattr(mix_kernels, "_grad_weight_kernel", _Forbidden("_grad_weight_kernel"))
    _check_mix(shape, layout, torch.float32, seed=FUSED_CASES.index((shape, layout)))


def test_actnorm_fused_backward_empty_runs(monkeypatch, ieee_float32):
    """More programs than (sample, pixel block) items: the idle programs' partials are zeros, the sums exact."""
    monkeypatch.setattr(mix_kernels, "_fused_split_count", lambda *args: 7)
    _check_mix((1, 5, 3, 7), "contiguous", torch.float32, seed=40)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_actnorm_fused_backward_16bit(dtype, monkeypatch):
    monkeypatch.setattr(mix_kernels, "_grad_weight_kernel", _Forbidden("_grad_weight_kernel"))
    _check_mix((2, 12, 3, 7), "channels_last", dtype, seed=20)


def test_actnorm_fused_backward_float32_gradient_of_16bit_input(monkeypatch, ieee_float32):
    """``g`` float32, ``x`` bfloat16: no 16-bit dot (the operands differ), ``grad_x`` in the dtype of ``x``."""
    monkeypatch.setattr(mix_kernels, "_grad_weight_kernel", _Forbidden("_grad_weight_kernel"))
    gen = _generator(21)
    x = torch.randn(2, 9, 3, 5, generator=gen).bfloat16()
    weight = torch.randn(9, 9, generator=gen) / 3
    grad_y = torch.randn(2, 9, 3, 5, generator=gen)
    grad_x, grad_w, grad_b = mix_kernels.actnorm_invconv_bwd(_on_device(grad_y), _on_device(x), _on_device(weight))
    gx_truth, gw_truth, gb_truth = mix_reference.channel_mix_backward(grad_y.double(), x.double(), weight.double())
    assert grad_x.dtype == torch.bfloat16
    _assert_close("grad x", grad_x, gx_truth, rtol=1.6e-2, atol=1.6e-2)
    _assert_close("grad weight", grad_w, gw_truth, rtol=1e-5, atol=1e-4)
    _assert_close("grad bias", grad_b, gb_truth, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_actnorm_two_kernel_backward(dtype, monkeypatch, ieee_float32):
    """``C = 80 > 64``: ``Wᵀ·g`` by the channel-mix kernel, then the split-K ``∂L/∂W`` kernel."""
    monkeypatch.setattr(mix_kernels, "_fused_backward_kernel", _Forbidden("_fused_backward_kernel"))
    _check_mix((2, 80, 3, 3), "transposed", dtype, seed=30)


def test_actnorm_16bit_dots_round_the_weight():
    """16-bit inputs: ``W`` is rounded to their dtype before the dot, like ``conv2d(x, W.to(x.dtype))``. With
    ``W = 1 + 2⁻⁸ + 2⁻¹⁰`` (bfloat16: ``1 + 2⁻⁷``), ``x = 1`` and ``b = −1``, ``y = W − 1`` shows which ``W`` ran."""
    weight = torch.full((1, 1), 1 + 2**-8 + 2**-10)
    x = torch.ones(1, 1, 2, 3, dtype=torch.bfloat16)
    y = mix_kernels.actnorm_invconv_fwd(_on_device(x), _on_device(weight), _on_device(torch.full((1,), -1.0)))
    assert (y.cpu().float() == 2**-7).all(), y
    x32 = x.float()
    y32 = mix_kernels.actnorm_invconv_fwd(_on_device(x32), _on_device(weight), _on_device(torch.full((1,), -1.0)))
    torch.testing.assert_close(y32.cpu(), torch.full_like(x32, 2**-8 + 2**-10), rtol=1e-6, atol=0)


def test_actnorm_split_counts():
    """``SPLIT`` is at least 1, at most ``_MAX_SPLIT``; the fused one leaves every program its minimum of pixels
    (``8·C`` on a GPU: the partials stay a small part of the traffic)."""
    cpu = torch.device("cpu")
    assert mix_kernels._fused_split_count(1, 5, 1, cpu) == 1
    assert mix_kernels._split_count(1, 80, 1, cpu) == 1
    for batch, channels, pixels in ((64, 48, 16), (2, 5, 35), (1, 64, 4096)):
        split = mix_kernels._fused_split_count(batch, channels, pixels, cpu)
        assert 1 <= split <= mix_kernels._MAX_SPLIT
        min_pixels = max(mix_kernels._MIN_PIXELS_PER_FUSED_SPLIT, mix_kernels._FUSED_PIXELS_PER_CHANNEL * channels)
        assert split == 1 or batch * pixels // split >= min_pixels


def test_float32_dot_precision(monkeypatch):
    """TF32 only from ``_TF32_MIN_CHANNELS`` channels on, and only while cuDNN would use it for conv2d."""
    threshold = mix_kernels._TF32_MIN_CHANNELS
    monkeypatch.setattr(mix_kernels, "cudnn_conv_allows_tf32", lambda: True)
    assert mix_kernels._float32_dot_precision(threshold - 1) == "ieee"
    assert mix_kernels._float32_dot_precision(threshold) == "tf32"
    monkeypatch.setattr(mix_kernels, "cudnn_conv_allows_tf32", lambda: False)
    assert mix_kernels._float32_dot_precision(4 * threshold) == "ieee"


def test_cudnn_tf32_flag():
    """The flag is read as PyTorch's own conv2d reads it: the per-operator precision ("none" inheriting from
    cuDNN's, then the global one), or the one switch of older PyTorch. Settings are restored by hand: they are
    properties, which monkeypatch cannot put back."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        saved = cudnn.allow_tf32
        try:
            cudnn.allow_tf32 = False
            assert not mix_kernels.cudnn_conv_allows_tf32()
            cudnn.allow_tf32 = True
            assert mix_kernels.cudnn_conv_allows_tf32()
        finally:
            cudnn.allow_tf32 = saved
        return
    rnn = getattr(cudnn, "rnn", conv)
    saved = (conv.fp32_precision, rnn.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision)
    try:
        conv.fp32_precision = "ieee"
        assert not mix_kernels.cudnn_conv_allows_tf32()
        conv.fp32_precision = "tf32"
        assert mix_kernels.cudnn_conv_allows_tf32()
        conv.fp32_precision = "none"
        cudnn.fp32_precision = "none"
        torch.backends.fp32_precision = "none"
        assert not mix_kernels.cudnn_conv_allows_tf32()
        cudnn.fp32_precision = "tf32"
        conv.fp32_precision = "none"  # after the parent: setting a parent may reset its operators
        assert mix_kernels.cudnn_conv_allows_tf32()
    finally:
        torch.backends.fp32_precision, cudnn.fp32_precision = saved[3], saved[2]
        conv.fp32_precision, rnn.fp32_precision = saved[0], saved[1]
    assert (conv.fp32_precision, rnn.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision) == saved


def test_fused_config_pruning():
    """The FMA (IEEE float32) path keeps ≤ 4 tile elements per thread, the tensor-core paths ≤ 16."""
    space = [triton.Config({"BLOCK_P": p}, num_warps=w) for p, w in ((16, 4), (16, 8), (32, 8), (64, 8), (128, 8))]

    def kept(block_c, precision, half):
        configs = mix_kernels._prune_fused_configs(
            space, {}, BLOCK_C=block_c, DOT_PRECISION=precision, GX_16BIT=half, GW_16BIT=half
        )
        return [(c.kwargs["BLOCK_P"], c.num_warps) for c in configs]

    assert kept(64, "ieee", False) == [(16, 8)]
    assert kept(16, "ieee", False) == [(16, 4), (16, 8), (32, 8), (64, 8)]
    assert kept(64, "tf32", False) == [(16, 4), (16, 8), (32, 8), (64, 8)]
    assert kept(64, "ieee", True) == kept(64, "tf32", False)
