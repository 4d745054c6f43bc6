"""Benchmark cases of a MADE training step (Germain et al., 2015) at binarised MNIST's size, ``D = 784``, batch 128:
the log-likelihood of a batch under one mask set, forward and the gradients of every parameter.

- ``reference``: the MADE a user writes in plain PyTorch — an ``nn.Module`` of masked ``F.linear`` layers
  (``weight * mask``), ReLU, the direct input → output connection, ``binary_cross_entropy_with_logits`` — with the
  same weights and masks; ``compile`` is its ``torch.compile``.
- ``fastflow``: :class:`fastflow.models.MADE`'s ``log_prob`` (its argument checks included), run through
  ``torch.func.functional_call`` with the case's parameters. MADE uses no fused op of fastflow's (its layers are
  the matrix products above), so the provider is one of its own (``made``), not a backend: the case shows that
  the model costs no more than the plain network, as the issue asks, not a speed-up.

Parameters are the case's inputs (both modules run through ``functional_call``, which costs each the same), so
that every provider computes their gradients, as in training; ``x`` is
``uint8`` (not a leaf that would get a gradient), converted inside both. FLOPs: the masked products' multiply-adds
(``2·B·Σ in·out`` forward, twice that backward), the mask multiplications and activations not counted.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from bench.harness import Case, register
from fastflow.models import MADE

ACCEPTANCE_BATCH, DIM = 128, 784


class _LogLikelihood(nn.Module):
    """``MADE.log_prob`` as a module's forward, for ``functional_call``."""

    def __init__(self, model: MADE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(x)


# The models by (hidden sizes, device): a plain dict, looked up (not built) in the timed step, as in bench_glow.
_MODELS: dict[tuple[tuple[int, ...], torch.device], _LogLikelihood] = {}


def _made(hidden: tuple[int, ...], device: torch.device) -> _LogLikelihood:
    key = (hidden, device)
    if key not in _MODELS:
        torch.manual_seed(0)
        model = MADE(DIM, hidden, natural_ordering=True, direct=True).to(device).train()
        _MODELS[key] = _LogLikelihood(model)
        _PLAIN[key] = _PlainMADE(model.net).to(device)
    return _MODELS[key]


def _inputs(hidden, batch, device, dtype, generator) -> dict[str, torch.Tensor]:
    # Binarised MNIST has about 13 % ones.
    x = (torch.rand(batch, DIM, device=device, generator=generator) < 0.13).to(torch.uint8)
    module = _made(hidden, x.device)
    inputs = {name: p.detach().clone().to(dtype) for name, p in module.named_parameters()}
    inputs["x"] = x
    return inputs


def _fastflow(hidden, **inputs) -> torch.Tensor:
    x = inputs.pop("x")
    return torch.func.functional_call(_MODELS[(hidden, x.device)], inputs, (x,))


class _PlainMADE(nn.Module):
    """The MADE a user writes: ``nn.Linear`` layers whose weights are multiplied by fixed 0/1 mask buffers, ReLU,
    a direct connection, the Bernoulli log-likelihood (the layers named as in ``MaskedMLP``, without the
    ``model.net.`` prefix)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(layer.in_features, layer.out_features) for layer in net.layers)
        self.direct = nn.Linear(DIM, DIM, bias=False)
        for mine, theirs in zip([*self.layers, self.direct], [*net.layers, net.direct], strict=True):
            mine.register_buffer("mask", theirs.mask.clone())

    def forward(self, x8: torch.Tensor) -> torch.Tensor:
        x = x8.to(self.direct.weight.dtype)
        h = x
        for i, layer in enumerate(self.layers):
            h = F.linear(h, layer.weight * layer.mask, layer.bias)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        logits = h + F.linear(x, self.direct.weight * self.direct.mask)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)


_PLAIN: dict[tuple[tuple[int, ...], torch.device], _PlainMADE] = {}


def _plain(hidden, **inputs) -> torch.Tensor:
    """The plain module, through ``functional_call`` as the model is (the same parameters, the model's masks)."""
    x = inputs.pop("x")
    plain = _PLAIN[(hidden, x.device)]
    return torch.func.functional_call(plain, {name.removeprefix("model.net."): t for name, t in inputs.items()}, (x,))


def _flops(batch: int, hidden: tuple[int, ...]) -> dict[str, int]:
    widths = (DIM, *hidden, DIM)
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) + DIM * DIM  # + the direct layer
    fwd = 2 * batch * macs
    return {"fwd": fwd, "bwd": 2 * fwd, "full": 3 * fwd}


def make_case(hidden: tuple[int, ...], batch: int = ACCEPTANCE_BATCH, *, quick: bool = False) -> Case:
    return Case(
        op="made",
        name=f"loglik-B{batch}xD{DIM}-h{'x'.join(map(str, hidden))}-direct-f32",
        make_inputs=functools.partial(_inputs, hidden, batch),
        fns={"reference": functools.partial(_plain, hidden), "made": functools.partial(_fastflow, hidden)},
        bytes={},
        flops=_flops(batch, hidden),
        quick=quick,
        params={"batch": batch, "dim": DIM, "hidden": list(hidden), "direct": True, "masks": 1},
    )


@register("made")
def cases(device: torch.device) -> list[Case]:
    return [make_case((500,), quick=True), make_case((500, 500), quick=True)]
