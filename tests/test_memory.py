"""The memory-saving backprop (``InvertibleSequential(memory_efficient=True)``, ``Glow(memory_efficient=True)``):
the same gradients as standard autograd, and a training step whose peak memory stops growing with depth."""

from __future__ import annotations

import pytest
import torch

from bench.glow_memory import measure_in_child
from fastflow.models import Glow, RealNVP


def _relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return ((value - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


def _gradients(model: torch.nn.Module, x: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dequantisation noise for both models
    model.bits_per_dim(x).mean().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("family", ["glow", "realnvp"])
def test_gradients_agree_with_standard_autograd(family, dtype, tolerance):
    def build(memory_efficient: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        if family == "glow":
            return Glow(3, 8, levels=2, depth=4, hidden_channels=16, memory_efficient=memory_efficient).to(dtype)
        return RealNVP(3, 8, levels=2, hidden_channels=8, num_blocks=1, memory_efficient=memory_efficient).to(dtype)

    standard, efficient = build(False), build(True)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    _gradients(standard, x)  # ActNorm's initialisation, then make every layer non-trivial
    with torch.no_grad():
        for p in standard.parameters():
            p.add_(0.05 * torch.randn_like(p))
    efficient.load_state_dict(standard.state_dict())
    expected, found = _gradients(standard, x), _gradients(efficient, x)
    assert expected.keys() == found.keys()
    errors = {name: _relative_error(found[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, f"{worst}: relative error {errors[worst]:.2e} > {tolerance}"


def test_memory_efficient_glow_stores_nothing_between_steps():
    """Only the levels' outputs are saved: running without gradients afterwards leaves no graph behind."""
    model = Glow(1, 8, levels=2, depth=3, hidden_channels=8, num_levels=17, memory_efficient=True)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    loss = model.bits_per_dim(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.bits_per_dim(x).shape == (4,)


def test_peak_memory_stops_growing_with_depth():
    """Glow 3×32×32, L=3, batch 16, hidden 128, float32, CPU; peak of one training step in a child process."""
    options = dict(batch=16, hidden=128)
    efficient_4 = measure_in_child(4, True, **options)["peak_bytes"]
    efficient_16 = measure_in_child(16, True, **options)["peak_bytes"]
    standard_16 = measure_in_child(16, False, **options)["peak_bytes"]
    mb = 2**20
    report = (f"memory-saving K=4 {efficient_4 / mb:.1f} MB, K=16 {efficient_16 / mb:.1f} MB; "
              f"standard K=16 {standard_16 / mb:.1f} MB")
    assert efficient_16 <= 1.3 * efficient_4, report
    assert efficient_16 <= 0.35 * standard_16, report
