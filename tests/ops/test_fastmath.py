"""The CPU kernels' polynomial float32 exp / expm1 / log1p (csrc/cpu/fastmath.h) against float64: the ulp bound
the header documents, over the whole documented input range, and the behaviour it promises at the range ends.
They are reached through the test-only op torch.ops.fastflow_C._fastmath, which runs exactly the kernels' code."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch

from fastflow import _backends

HEADER = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "cpu" / "fastmath.h"

F32 = np.float32


# The documented contract, per probe name: the C++ function, the float64 truth, the input range [lo, hi] and the
# max error in ulp there (as in the header, which test_header_documents_these_bounds keeps in step).
CONTRACT = {
    "exp": ("exp_", np.exp, -86.6, 88.7228, 1.0),
    "exp_nonpositive": ("exp_nonpositive", np.exp, -86.6, 0.0, 1.0),
    "exp_bounded": ("exp_bounded", np.exp, -86.6, 80.0, 1.0),
    "expm1": ("expm1_", np.expm1, 0.0, 40.0, 1.5),
    "log1p": ("log1p_unit", np.log1p, 0.0, 1.0, 1.75),
}

# The worst inputs of the exhaustive measurement (with FMA contraction, then without): the sampled grid alone
# would stay further below the bound.
WORST = {
    "exp": ["-0x1.775366p+2", "-0x1.45bcaap+6"],
    "exp_nonpositive": ["-0x1.775366p+2", "-0x1.45bcaap+6"],
    "exp_bounded": ["-0x1.775366p+2", "-0x1.45bcaap+6"],
    "expm1": ["0x1.0fc23ep+4", "0x1.789466p-2"],
    "log1p": ["0x1.a8b94cp-2", "0x1.a84becp-2"],
}


@pytest.fixture(scope="module", autouse=True)
def _extension():
    reason = _backends.extension_reason("fastflow_C::_fastmath", "cpu")
    if reason is not None:
        pytest.skip(f"cpu: {reason}")


SMALLEST_SUBNORMAL = float(np.finfo(F32).smallest_subnormal)
SMALLEST_NORMAL = float(np.finfo(F32).tiny)


def fastmath(x, function: str) -> np.ndarray:
    return torch.ops.fastflow_C._fastmath(torch.from_numpy(np.asarray(x, dtype=F32)), function).numpy()


def _ordinal(value: float) -> int:
    """Position of a float32 in the ordered sequence of all of them (0 for ±0), so that a range is an interval."""
    bits = int(np.array(value, dtype=F32).view(np.uint32))
    return bits if bits < 2**31 else -(bits - 2**31)


def _from_ordinals(ordinals: np.ndarray) -> np.ndarray:
    bits = np.where(ordinals >= 0, ordinals, 2**31 - ordinals).astype(np.uint32)
    return bits.view(F32)


def _inputs(function: str, lo: float, hi: float) -> np.ndarray:
    """Every k-th float32 of [lo, hi] (each binade in proportion to its floats, subnormals included), a uniform grid
    in value (most floats are tiny, where the results are trivial), the range ends and the measured worst inputs."""
    first, last = _ordinal(lo), _ordinal(hi)
    stride = max(1, (last - first) // 2_000_000) | 1  # odd: the low mantissa bits vary
    by_bits = _from_ordinals(np.arange(first, last + 1, stride, dtype=np.int64))
    by_value = np.linspace(lo, hi, 1_000_001, dtype=np.float64).astype(F32)
    ends = np.array([lo, hi, np.nextafter(F32(lo), F32(hi)), np.nextafter(F32(hi), F32(lo))], dtype=F32)
    worst = np.array([float.fromhex(x) for x in WORST[function]], dtype=F32)
    x = np.concatenate([by_bits, by_value, ends, worst])
    return x[(x >= F32(lo)) & (x <= F32(hi))]


def ulp_error(approx: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|approx − truth| in ulp of truth rounded to float32."""
    ulp = np.spacing(np.abs(truth.astype(F32))).astype(np.float64)
    return np.abs(approx.astype(np.float64) - truth) / ulp


@pytest.mark.parametrize("function", list(CONTRACT))
def test_error_within_documented_bound(function):
    _, truth_of, lo, hi, bound = CONTRACT[function]
    x = _inputs(function, lo, hi)
    error = ulp_error(fastmath(x, function), truth_of(x.astype(np.float64)))
    worst = int(np.argmax(error))
    assert error[worst] <= bound, (
        f"{function}: {error[worst]:.4f} ulp at x = {float(x[worst])!r} ({float(x[worst]).hex()}), over the "
        f"documented {bound} ulp on [{lo}, {hi}]"
    )


def test_header_documents_these_bounds():
    """The header's 'max B ulp on [lo, hi]' of each function is the contract asserted here."""
    text = HEADER.read_text()
    for function, (cpp_name, _, lo, hi, bound) in CONTRACT.items():
        before, found, _ = text.partition(f"FF_INLINE float {cpp_name}(")
        assert found, f"{cpp_name} not found in {HEADER}"
        comment = " ".join(re.findall(r"^// ?(.*)$", before.rsplit("\n\n", 1)[-1], flags=re.MULTILINE))
        documented = re.search(r"max ([\d.]+) ulp on \[([-\d.]+), ([-\d.]+)\]", comment, flags=re.IGNORECASE)
        assert documented, f"the comment of {cpp_name} states no 'max B ulp on [lo, hi]'"
        assert tuple(float(v) for v in documented.groups()) == (bound, lo, hi), function


def test_exp_edges():
    # From 88.72284, the first float above log(FLT_MAX): inf, as expf; below it every value is finite and within
    # the bound (the floats between 88.72 and the overflow, all of them).
    above = [88.72284, np.nextafter(F32(88.72284), F32(np.inf)), 89.0, 100.0, 1e30, np.inf]
    assert np.all(fastmath(above, "exp") == np.inf)
    assert np.log(np.float64(np.finfo(np.float32).max)) < np.float64(F32(88.72284))
    # Below -86.6: flushed to 0, though exp is a normal float down to -87.33.
    below = [np.nextafter(F32(-86.6), F32(-np.inf)), -87.0, -87.33, -100.0, -1e30, -np.inf]
    assert np.all(fastmath(below, "exp") == 0)
    assert np.exp(np.float64(F32(-87.33))) > SMALLEST_NORMAL
    assert np.all(fastmath([0.0, -0.0, SMALLEST_SUBNORMAL, -SMALLEST_SUBNORMAL], "exp") == 1)
    near = _from_ordinals(np.arange(_ordinal(88.72), _ordinal(88.72284)))
    values = fastmath(near, "exp").astype(np.float64)
    truth = np.exp(near.astype(np.float64))
    assert np.all(np.isfinite(values))
    ulp = np.abs(values - truth) / np.spacing(truth.astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 1.0, ulp.max()


def test_exp_nonpositive_edges():
    # Below -86.6 (down to -inf): exp(-86.6), not 0.
    clamped = fastmath([-86.6], "exp_nonpositive")[0]
    assert clamped == pytest.approx(2.455e-38, rel=1e-3)
    below = [np.nextafter(F32(-86.6), F32(-np.inf)), -87.5, -100.0, -1e30, -np.inf]
    assert np.all(fastmath(below, "exp_nonpositive") == clamped)
    assert np.all(fastmath([0.0, -0.0], "exp_nonpositive") == 1)


def test_exp_bounded_edges():
    # Clamped to [-86.6, 80]: exp of the range end outside it, normal floats only; equal to exp_ inside (the same
    # polynomial, scaled by an exact power of two).
    low, high = fastmath([-86.6, 80.0], "exp_bounded")
    assert low == pytest.approx(2.455e-38, rel=1e-3) and high == pytest.approx(np.exp(80.0), rel=1e-6)
    # (to an ulp: GCC may constant-fold the clamped branch of the scalar remainder loop, rounding differently)
    np.testing.assert_allclose(fastmath([-87.5, -1e30, -np.inf], "exp_bounded"), low, rtol=2.0**-23)
    np.testing.assert_allclose(fastmath([80.5, 88.8, 1e30, np.inf], "exp_bounded"), high, rtol=2.0**-23)
    inside = np.linspace(-86.6, 80.0, 100_001, dtype=F32)
    np.testing.assert_array_equal(fastmath(inside, "exp_bounded"), fastmath(inside, "exp"))


def test_expm1_edges():
    assert fastmath([0.0], "expm1")[0] == 0
    # Tiny x is returned exactly (full relative precision where expm1(x) = x in float32).
    tiny = np.array([SMALLEST_SUBNORMAL, 1e-40, SMALLEST_NORMAL, 1e-30, 1e-10, 2.0**-25], dtype=F32)
    np.testing.assert_array_equal(fastmath(tiny, "expm1"), tiny)
    assert np.isfinite(fastmath([40.0], "expm1")[0])


def test_log1p_edges():
    assert fastmath([0.0], "log1p")[0] == 0
    # e < 2^-24: the rounding correction is all of the result, which is e itself.
    tiny = np.array([SMALLEST_SUBNORMAL, 1e-40, SMALLEST_NORMAL, 1e-30, 1e-10, 2.0**-25], dtype=F32)
    np.testing.assert_array_equal(fastmath(tiny, "log1p"), tiny)


@pytest.mark.parametrize("function", list(CONTRACT))
def test_nan_gives_nan(function):
    assert np.isnan(fastmath([np.nan], function)[0])


def test_any_layout():
    x = torch.linspace(-5, 5, 64).reshape(8, 8).t()
    assert torch.equal(torch.ops.fastflow_C._fastmath(x, "exp"), torch.ops.fastflow_C._fastmath(x.contiguous(), "exp"))


def test_bad_input():
    op = torch.ops.fastflow_C._fastmath
    x = torch.zeros(3)
    with pytest.raises(TypeError, match="float32"):
        op(x.double(), "exp")
    with pytest.raises(ValueError, match="exp, exp_nonpositive, exp_bounded, expm1, log1p; got 'log'"):
        op(x, "log")
    with pytest.raises(NotImplementedError):  # only a CPU kernel is registered
        op(x.to("meta"), "exp")
