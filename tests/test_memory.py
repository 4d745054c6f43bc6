"""The memory-saving backprop (``InvertibleSequential(memory_efficient=True)``, ``Glow(memory_efficient=True)``):
the same gradients as standard autograd, and a training step whose peak memory stops growing with depth."""

from __future__ import annotations

import contextlib

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


def _chain_gradients(chain: torch.nn.Module, x: torch.Tensor, cond: torch.Tensor | None):
    x = x.detach().requires_grad_(True)
    inputs = [x] + ([cond] if cond is not None else [])
    y, logdet = chain(x, cond)
    loss = 0.5 * (y**2).sum() - logdet.sum()
    return torch.autograd.grad(loss, [*inputs, *chain.parameters()])


@pytest.mark.parametrize("variant", ["fused", "hooked-step", "plain-reference", "unfused-invconv"])
def test_walk_by_parts_gives_autograds_gradients(variant):
    """The walk through a Glow step's parts (ActNorm + 1×1 convolution rebuilt by the backward kernel, the coupling
    with one conditioner pass), a conditional chain with ``cond`` requiring grad, against standard autograd in
    float64; also when a hook on a step makes the walk treat it whole, under the forced plain reference (the fused
    part then records its graph the generic way) and with a plain (non-LU) 1×1 convolution."""
    import fastflow
    from fastflow.nn import FlowStep, InvertibleSequential

    def build(memory_efficient: bool) -> InvertibleSequential:
        torch.manual_seed(0)
        steps = [FlowStep(8, hidden_channels=6, cond_channels=3, lu=variant != "unfused-invconv",
                          coupling="additive" if k == 1 else "affine") for k in range(3)]
        chain = InvertibleSequential(*steps, memory_efficient=memory_efficient).double()
        with torch.no_grad():
            for p in chain.parameters():
                p.normal_(0.0, 0.2)
        return chain

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 4, 4, generator=generator, dtype=torch.float64)
    cond = torch.randn(3, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    standard, efficient = build(False), build(True)
    if variant == "hooked-step":
        efficient[1].register_forward_hook(lambda module, args, output: None)
    context = fastflow.set_backend("reference") if variant == "plain-reference" else contextlib.nullcontext()
    with context:
        expected, found = _chain_gradients(standard, x, cond), _chain_gradients(efficient, x, cond)
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-10, atol=1e-12)


def test_backward_runs_each_coupling_conditioner_once():
    """One extra conditioner pass per coupling, not two: in the memory-saving backward every conditioner of a level
    runs exactly once (the forward ran each once as well)."""
    model = Glow(3, 8, levels=2, depth=3, hidden_channels=8, memory_efficient=True)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        model.bits_per_dim(x)  # ActNorm's initialisation
    calls: list[str] = []
    conditioners = {name: module for name, module in model.named_modules()
                    if name.endswith("coupling.conditioner")}
    assert len(conditioners) == 2 * 3
    for name, module in conditioners.items():
        module.register_forward_hook(lambda module, args, output, name=name: calls.append(name))
    loss = model.bits_per_dim(x).mean()
    assert sorted(calls) == sorted(conditioners)
    calls.clear()
    loss.backward()
    assert sorted(calls) == sorted(conditioners)


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


def test_functional_call_gets_the_gradients_of_the_tensors_it_passes():
    """``torch.func.functional_call`` swaps the caller's tensors in for the forward only: the memory-saving backward
    re-runs the layers with those (not the module's own, put back by then) and returns their gradients."""
    torch.manual_seed(0)
    standard = Glow(3, 8, levels=2, depth=2, hidden_channels=8)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        standard.bits_per_dim(x)
    efficient = Glow(3, 8, levels=2, depth=2, hidden_channels=8, memory_efficient=True)
    efficient.load_state_dict(standard.state_dict())
    # Other values than the modules' own, so that using those would show.
    tensors = {name: (p.detach() + 0.05 * torch.randn_like(p)).requires_grad_(True)
               for name, p in standard.named_parameters()}

    def gradients(model):
        zs, logdet = torch.func.functional_call(model, tensors, (x,), {"noise": False})
        loss = sum(0.5 * (z**2).sum() for z in zs) - logdet.sum()
        return torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)

    for name, e, f in zip(tensors, gradients(standard), gradients(efficient), strict=True):
        assert (e is None) == (f is None), name
        if e is not None:
            assert _relative_error(f, e) <= 1e-4, name


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
@pytest.mark.parametrize("scale", ["sigmoid", "exp", "additive"])
@pytest.mark.parametrize("spatial", [True, False])
def test_coupling_rebuild_by_its_backward_kernel(mask, scale, spatial):
    """The couplings' walk calls the op's backward directly on the rebuilt input (no second coupling pass): every
    mask, scale (and the additive coupling), flip, images and vectors, against standard autograd in float64."""
    from fastflow.nn import AdditiveCoupling, AffineCoupling, InvertibleSequential

    def layer(k: int):
        options = dict(hidden_channels=5, mask=mask, flip=bool(k % 2), spatial=spatial)
        return AdditiveCoupling(6, **options) if scale == "additive" else AffineCoupling(6, scale=scale, **options)

    def build(memory_efficient: bool) -> InvertibleSequential:
        torch.manual_seed(0)
        layers = [layer(k) for k in range(3)]
        chain = InvertibleSequential(*layers, memory_efficient=memory_efficient).double()
        with torch.no_grad():
            for p in chain.parameters():
                p.normal_(0.0, 0.3)
        return chain

    generator = torch.Generator().manual_seed(2)
    shape = (4, 6, 3, 5) if spatial else (4, 6)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    expected = _chain_gradients(build(False), x, None)
    found = _chain_gradients(build(True), x, None)
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-10, atol=1e-12)
