"""The numerics rule of the test suite, in one place.

The float64 reference is the truth. A fast path passes when its error against it is at most twice the error
of the reference op run in the same low precision, plus a floor per dtype (relative to the reference's scale).
"""

from __future__ import annotations

import torch

#: Floor per dtype, relative to ``max(1, max|reference|)``.
FLOOR = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


def max_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    if truth.numel() == 0:
        return 0.0
    return (value.detach().double() - truth.detach().double()).abs().max().item()


def assert_close_to_reference(
    name: str, fast: torch.Tensor, reference_low: torch.Tensor, reference64: torch.Tensor, dtype: torch.dtype
) -> None:
    """``|fast − ref64| ≤ 2·|ref_low − ref64| + floor(dtype)·max(1, |ref64|)``, with a readable report."""
    assert fast.shape == reference64.shape, f"{name}: shape {tuple(fast.shape)} != {tuple(reference64.shape)}"
    assert torch.isfinite(fast.detach()).all(), f"{name}: non-finite values"
    scale = max(1.0, reference64.detach().abs().max().item()) if reference64.numel() else 1.0
    fast_error = max_error(fast, reference64)
    low_error = max_error(reference_low, reference64)
    bound = 2 * low_error + FLOOR[dtype] * scale
    assert fast_error <= bound, (
        f"{name} ({dtype}): error {fast_error:.3e} vs float64 reference exceeds bound {bound:.3e} "
        f"(reference in {dtype}: {low_error:.3e}, scale {scale:.3g})"
    )
