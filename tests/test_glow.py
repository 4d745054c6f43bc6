"""Glow, RealNVP and NICE: the likelihood, exact inverses, sampling, class conditioning, ActNorm's initialisation
(also across 2 gloo ranks), no host synchronisation in a training step, and the non-finite guard."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastflow.models import NICE, Glow, RealNVP
from fastflow.nn import ActNorm, FlowStep, InvConv1x1
from fastflow.train.guard import NonFiniteGuard


def _randomize(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "log_s" not in name and "lower" not in name and "upper" not in name:
                parameter.add_(torch.randn_like(parameter) * std)
    return model


def _glow(**kwargs) -> Glow:
    torch.manual_seed(0)
    options = dict(levels=2, depth=2, hidden_channels=8, num_levels=17)
    options.update(kwargs)
    return Glow(1, 8, **options).double()


def test_glow_log_prob_and_exact_inverse():
    model = _glow()
    x = torch.randint(0, 17, (3, 1, 8, 8), dtype=torch.uint8)
    model(x)  # ActNorm's data-dependent initialisation
    _randomize(model)
    zs, logdet = model(x, noise=False)
    assert [tuple(z.shape[1:]) for z in zs] == model.latent_shapes() == [(2, 4, 4), (8, 2, 2)]
    log_prob = model.log_prob(x, noise=False)
    prior = sum(torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) for z in zs)
    torch.testing.assert_close(log_prob, prior + logdet - 64 * math.log(17))
    torch.testing.assert_close(model.bits_per_dim(x, noise=False), -log_prob / (64 * math.log(2)))
    u = model.preprocess(x, noise=False)
    torch.testing.assert_close(model.inverse(zs), u, rtol=1e-10, atol=1e-10)


def test_glow_logdet_matches_autograd_jacobian():
    model = _glow()
    x = torch.randint(0, 17, (2, 1, 8, 8), dtype=torch.uint8)
    model(x)
    _randomize(model)
    u = model.preprocess(x[:1], noise=False)

    def flat(v):
        zs, _ = model.encode(v.view(1, 1, 8, 8))
        return torch.cat([z.flatten() for z in zs])

    jacobian = torch.autograd.functional.jacobian(flat, u.flatten())
    _, logdet = model.encode(u)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian)[1], rtol=1e-8, atol=1e-8)


def test_glow_sampling_and_temperature():
    model = _glow().float()
    samples = model.sample(4, temperature=[0.5, 0.7])
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    with pytest.raises(ValueError, match="one per level"):
        model.sample(2, temperature=[0.5])
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        model.sample(-2)


def test_glow_class_conditional():
    model = _glow(num_classes=3)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    model(x, labels)
    _randomize(model, std=0.2)
    assert model.log_prob(x, labels).shape == (4,)
    assert model.class_logits(x).shape == (4, 3)
    with pytest.raises(ValueError, match="pass the labels y"):
        model.log_prob(x)
    zs, _ = model(x, labels, noise=False)
    torch.testing.assert_close(model.inverse(zs, labels), model.preprocess(x, noise=False))
    assert model.sample(2, y=torch.tensor([0, 2])).shape == (2, 1, 8, 8)


def test_glow_bad_input():
    with pytest.raises(ValueError, match="divisible by 2\\^levels"):
        Glow(3, 12, levels=3)
    model = _glow()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 8, 8\]"):
        model.log_prob(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="y was given"):
        model.log_prob(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))


def test_glow_training_step_makes_no_host_synchronisation():
    """After ActNorm's initialisation, forward + backward of Glow syncs nothing (no .item(), slogdet, nonzero)."""
    model = _glow().float()
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    model.bits_per_dim(x).mean().backward()  # initialises ActNorm
    with torch.profiler.profile() as profile:
        model.bits_per_dim(x).mean().backward()
    syncing = {"aten::item", "aten::_local_scalar_dense", "aten::linalg_slogdet", "aten::nonzero", "aten::is_nonzero"}
    names = {event.name for event in profile.events()}
    assert not names & syncing, sorted(names & syncing)


@pytest.mark.gpu
def test_glow_training_step_makes_no_host_synchronisation_on_gpu():
    model = _glow().float().cuda()
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8, device="cuda")
    model.bits_per_dim(x).mean().backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.bits_per_dim(x).mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_realnvp_and_nice():
    torch.manual_seed(0)
    realnvp = _randomize(RealNVP(1, 8, levels=2, hidden_channels=8, num_blocks=1, num_levels=17).double())
    x = torch.randint(0, 17, (2, 1, 8, 8), dtype=torch.uint8)
    zs, _ = realnvp(x, noise=False)
    assert [tuple(z.shape[1:]) for z in zs] == realnvp.latent_shapes()
    torch.testing.assert_close(realnvp.inverse(zs), (x.double() + 0.5) / 17)
    assert torch.isfinite(realnvp.bits_per_dim(x)).all()
    assert realnvp.sample(3).shape == (3, 1, 8, 8)

    nice = _randomize(NICE(10, hidden_size=16, num_hidden_layers=2, levels=17).double())
    v = torch.randint(0, 17, (4, 10), dtype=torch.uint8)
    h, logdet = nice(v, noise=False)
    torch.testing.assert_close(nice.inverse(h), (v.double() + 0.5) / 17)
    log_prob = nice.log_prob(v, noise=False)
    expected = -(torch.nn.functional.softplus(h) + torch.nn.functional.softplus(-h)).sum(1) + logdet - 10 * math.log(17)
    torch.testing.assert_close(log_prob, expected)
    assert nice.sample(5).shape == (5, 10)


def test_actnorm_initialisation_gives_zero_mean_unit_std():
    layer = ActNorm(3)
    x = (
        torch.randn(16, 3, 5, 5) * torch.tensor([0.1, 2.0, 7.0])[:, None, None]
        + torch.tensor([5.0, -1.0, 0.0])[:, None, None]
    )
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    before = layer.bias.detach().clone()
    layer(x * 3)  # initialised once only
    torch.testing.assert_close(layer.bias, before)
    clone = ActNorm(3)
    clone.load_state_dict(layer.state_dict())
    assert not clone.needs_init


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_rank(rank: int, world: int, port: int, x: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = ActNorm(x.shape[1])
        layer(x.chunk(world)[rank])
        if rank == 0:
            torch.save(layer.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_actnorm_initialisation_across_two_gloo_ranks_equals_one_process(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_init_rank, args=(2, _free_port(), x, out), nprocs=2, join=True)
    single = ActNorm(3)
    single(x)
    distributed = torch.load(out)
    torch.testing.assert_close(distributed["log_scale"], single.log_scale.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(distributed["bias"], single.bias.detach(), rtol=1e-6, atol=1e-6)


def test_non_finite_guard_names_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    guard = NonFiniteGuard(model)
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    guard.start()
    loss = model(torch.ones(2, 3)).sum()
    with pytest.raises(FloatingPointError, match=r"step 7: non-finite value first in 1 \(Linear\)"):
        guard.check(7, loss)
    guard.close()


def test_empty_batch_and_empty_init_batch():
    step = FlowStep(4, hidden_channels=4)
    with pytest.raises(ValueError, match="first training batch, which is empty"):
        step(torch.zeros(0, 4, 3, 3))
    step(torch.randn(2, 4, 3, 3))
    for layer in (step, ActNorm(4), InvConv1x1(4, lu=False)):
        layer.eval()
        y, logdet = layer(torch.zeros(0, 4, 3, 3))
        assert y.shape == (0, 4, 3, 3) and logdet.shape == (0,)


def test_hooks_on_actnorm_and_invconv_fire_inside_a_flow_step():
    """A hook on a FlowStep's ActNorm or InvConv1x1 sees the tensors of an unfused step (the step then calls the
    layers one after the other), and the step's result is the fused one."""
    torch.manual_seed(0)
    step = FlowStep(4, hidden_channels=8)
    x = torch.randn(3, 4, 5, 5)
    step(x)  # ActNorm's initialisation
    with torch.no_grad():
        step.coupling.conditioner.net[-1].weight.normal_(0, 0.1)
    fused_y, fused_logdet = step(x)
    seen = {}

    def after_actnorm(module, args, output):
        seen.setdefault("actnorm", (args[0], output[0]))

    def before_invconv(module, args):
        seen.setdefault("invconv", args[0])

    handles = [
        step.actnorm.register_forward_hook(after_actnorm),
        step.invconv.register_forward_pre_hook(before_invconv),
    ]
    try:
        y, logdet = step(x)
        x_back, _ = step.inverse(y)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(seen["actnorm"][0], x)
    assert torch.equal(seen["invconv"], seen["actnorm"][1])
    torch.testing.assert_close(y, fused_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet, fused_logdet, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
    assert step._fused()  # the hooks are gone: fused again


def test_glow_floor_records_every_conditioner_and_counts_its_flops():
    """``bench.glow_floor``: one step's conditioner calls (every coupling's ``GlowConditioner`` and every prior's
    convolution, in order, with their shapes) and the FLOPs of their convolutions (2·k²·C_in·C_out per output
    position forward, three times that with the backward)."""
    from bench import glow_floor
    from fastflow.nn.coupling import GlowConditioner
    from fastflow.nn.zeroconv import ZeroConv2d

    torch.manual_seed(0)
    model = Glow(3, 8, levels=2, depth=2, hidden_channels=4)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    calls = glow_floor.conditioner_calls(model, lambda: model.bits_per_dim(x).mean().backward())
    assert [type(m) for m, _, _ in calls] == [GlowConditioner] * 2 + [ZeroConv2d] + [GlowConditioner] * 2
    assert [tuple(s) for _, s, _ in calls] == [(2, 6, 4, 4)] * 2 + [(2, 6, 4, 4)] + [(2, 12, 2, 2)] * 2
    assert not any(m._forward_hooks for m in model.modules())  # the recording hooks are gone
    per_position = {6: 2 * (9 * 6 * 4 + 4 * 4 + 9 * 4 * 12), 12: 2 * (9 * 12 * 4 + 4 * 4 + 9 * 4 * 24)}
    # Level 1: two couplings and the prior on 2 × 4 × 4 positions; level 2: two couplings on 2 × 2 × 2.
    expected = 3 * (2 * 32 * per_position[6] + 32 * 2 * 9 * 6 * 12 + 2 * 8 * per_position[12])
    assert glow_floor.convolution_flops(calls) == expected


def test_bench_glow_case_under_bf16_autocast():
    """The Glow bench case's bf16 variant (run on GPUs) computes the same bits/dim as float32 to bf16's precision
    for every provider function, eager here on the CPU, and names its precision."""
    from bench import bench_glow

    config = (2, 3, 32, 2, 1, 8)
    cases = {dtype: bench_glow.make_glow_case(config, {}, autocast=dtype) for dtype in (None, torch.bfloat16)}
    assert cases[None].name.endswith("-f32") and cases[torch.bfloat16].name.endswith("-bf16-autocast")
    inputs = cases[None].make_inputs(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    expected = cases[None].fns["fastflow"](**dict(inputs)).item()
    for name, fn in cases[torch.bfloat16].fns.items():
        loss = fn(**dict(inputs))
        assert loss.dtype == torch.float32 and math.isfinite(loss.item()), name
        assert abs(loss.item() - expected) < 0.02 * abs(expected), (name, loss.item(), expected)
