"""The CPU conditioner fast path (``fastflow.nn.conv_stack``): channels-last convolutions, fused with their ReLU
without autograd, equal to the plain ``nn.Sequential`` up to float rounding; and off wherever it must be."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastflow
from fastflow.nn import conv_stack
from fastflow.nn.coupling import GlowConditioner


def _conditioner(in_channels: int = 6, hidden: int = 32) -> GlowConditioner:
    torch.manual_seed(0)
    conditioner = GlowConditioner(in_channels, 2 * in_channels, hidden)
    with torch.no_grad():  # a zero last layer would hide its part of the products
        for p in conditioner.parameters():
            p.normal_(0.0, 0.1)
    return conditioner


def _close(found: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("size", [8, 16])
def test_fast_path_equals_the_plain_stack(size):
    conditioner = _conditioner()
    x = torch.randn(4, 6, size, size + 2).requires_grad_(True)
    assert conv_stack.applies(conditioner.net, x)
    with torch.no_grad():
        fused = conditioner(x)
    assert fused.is_contiguous()
    _close(fused, conditioner.net(x))
    found = conditioner(x)
    expected = conditioner.net(x)
    _close(found, expected)
    g = torch.randn_like(expected)
    leaves = [x, *conditioner.parameters()]
    for f, e in zip(torch.autograd.grad(found, leaves, g), torch.autograd.grad(expected, leaves, g), strict=True):
        _close(f, e)


def test_fast_path_stays_off_where_it_must():
    conditioner = _conditioner()
    x = torch.randn(2, 6, 16, 16)
    assert conv_stack.applies(conditioner.net, x)
    assert not conv_stack.applies(conditioner.net, torch.randn(64, 6, 4, 4))  # too few pixels: NHWC is slower
    assert not conv_stack.applies(conditioner.net, torch.randn(1, 6, 8, 8))  # too little work: the fixed cost loses
    assert not conv_stack.applies(conditioner.net.double(), x.double())
    conditioner.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv_stack.applies(conditioner.net, x)
    with fastflow.set_backend("reference"):  # the benchmarks' plain-PyTorch baseline
        assert not conv_stack.applies(conditioner.net, x)
    handle = conditioner.net[2].register_forward_hook(lambda module, args, output: None)
    assert not conv_stack.applies(conditioner.net, x)  # the hook must see its module run
    handle.remove()
    assert conv_stack.applies(conditioner.net, x)
    other = nn.Sequential(nn.Conv2d(6, 8, 3, padding="same"), nn.ReLU())
    assert not conv_stack.applies(other, x)
    other = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    assert not conv_stack.applies(other, x)


def test_glow_step_with_and_without_the_fast_path(monkeypatch):
    """A whole Glow (its level-1 conditioners on the fast path) gives the same loss and gradients as with the path
    turned off."""
    from fastflow.models import Glow

    torch.manual_seed(0)
    model = Glow(3, 16, levels=2, depth=2, hidden_channels=16)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        model.bits_per_dim(x)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = model.bits_per_dim(x).mean()
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    runs = []
    original = conv_stack.run
    monkeypatch.setattr(conv_stack, "run", lambda net, x: runs.append(x.shape) or original(net, x))
    fast = loss_and_grads()
    assert len(runs) == 2  # the two level-1 conditioners (8×8 after the squeeze); level 2 (4×4) runs plainly
    monkeypatch.setattr(conv_stack, "MIN_PIXELS", 10**9)
    plain = loss_and_grads()
    assert len(runs) == 2
    for f, e in zip(fast, plain, strict=True):
        _close(f, e)
