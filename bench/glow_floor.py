"""How much of a Glow training step is its conditioners' convolutions, and what that leaves to win.

``python -m bench.glow_floor [--depth 16] [--rounds 9] [--out bench/results]`` times, in one process and taking
turns (the Glow case of ``python -m bench``: ``3×32×32``, ``L = 3``, batch 16, hidden 128, float32; the same
model, its parameters the step's inputs), the step (bits/dim forward and the gradients of every parameter) of

- ``reference``: the model under ``fastflow.set_backend("reference")`` (plain PyTorch), eager;
- ``compile``: ``torch.compile`` of that;
- ``fastflow``: the model under the automatic backend choice, eager;
- ``convolutions``: **not a Glow step** — the model's own conditioner networks (every coupling's
  ``GlowConditioner`` and every ``Split`` prior's convolution) on inputs of the shapes a step feeds them,
  all forwards and then one backward, as a step runs them, on the automatic path (channels-last where it pays).

Every provider does these float32 convolutions with the same FLOPs (they are most of a step's work on a CPU), so a
provider's time less ``convolutions`` is what it spends on everything else: ActNorm, the 1×1 convolutions, the
couplings, the priors, autograd and the gradients' accumulation. The report gives each provider's step and that
remainder, and what the issue's target implies: to be ``r`` times faster than ``compile`` a step must take
``compile / r``, which leaves ``compile / r − convolutions`` for everything else; ``compile / convolutions`` is
the most any provider could gain over ``compile`` without faster convolutions. Medians over the rounds; each
round's ratios are taken within the round (this machine's speed drifts between rounds).

The convolutions' FLOPs are counted (:func:`convolution_flops`) and every time is also given as GFLOP/s of that
work, beside one large float32 matmul timed before and after (``bench.harness.matmul_rate``): how close the
convolutions already run to what this machine does at best.

Prints a table and writes ``<device>-<date>-glow-floor.json``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import fastflow
from bench import bench_glow
from bench.harness import TimingConfig, device_description, matmul_rate, write_json_result
from fastflow.nn.coupling import GlowConditioner
from fastflow.nn.zeroconv import ZeroConv2d

__all__ = ["conditioner_calls", "convolution_flops", "time_providers"]

RESULTS = Path(__file__).parent / "results"
PROVIDERS = ("reference", "compile", "fastflow", "convolutions")


def conditioner_calls(model: nn.Module, step) -> list[tuple[nn.Module, torch.Size, torch.Size]]:
    """``(conditioner, input shape, output shape)`` of every conditioner call one ``step()`` makes, in order.

    Recorded with forward hooks for one step (which makes that step take the hook-observing path: the shapes are
    the same), then removed."""
    calls: list[tuple[nn.Module, torch.Size, torch.Size]] = []
    handles = [m.register_forward_hook(lambda m, args, out: calls.append((m, args[0].shape, out.shape)))
               for m in model.modules() if isinstance(m, (GlowConditioner, ZeroConv2d))]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def convolution_flops(calls: list[tuple[nn.Module, torch.Size, torch.Size]]) -> int:
    """FLOPs of the conditioners' convolutions in one training step: ``2·k²·C_in·C_out`` per output position for
    the forward, twice that for the backward (the input's gradient, which every layer needs, its input being part
    of the flow, and the weight's)."""
    total = 0
    for module, _, shape_out in calls:
        positions = shape_out[0] * shape_out[2] * shape_out[3]
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d):
                k_h, k_w = conv.kernel_size
                total += 3 * 2 * k_h * k_w * conv.in_channels // conv.groups * conv.out_channels * positions
    return total


def time_providers(depth: int = 16, *, rounds: int = 9, batch: int = 16, hidden: int = 128, seed: int = 0) -> dict:
    """Median milliseconds of each of :data:`PROVIDERS` (and of their ratios within a round)."""
    config = (batch, 3, 32, 3, depth, hidden)
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    inputs = bench_glow._glow_inputs(config, device, torch.float32, generator)
    model = bench_glow._MODELS[(config, device, False)].model

    # The same leaf tensors every call: the compiled step guards on their identity (functional_call makes them
    # the module's parameters), so new ones would recompile it.
    leaves = {name: t if name == "u" else t.detach().requires_grad_(True) for name, t in inputs.items()}

    def step(fn) -> None:
        for t in leaves.values():
            t.grad = None
        fn(**leaves).backward()

    def eager(**leaves):
        return bench_glow._glow_step(config, **leaves)

    with fastflow.set_backend("reference"):
        compiled = torch.compile(eager, dynamic=False)
    calls = conditioner_calls(model, lambda: step(eager))
    convs = [(m, torch.randn(shape_in, generator=generator).requires_grad_(True),
              torch.randn(shape_out, generator=generator)) for m, shape_in, shape_out in calls]
    conv_params = [p for m in {id(m): m for m, _, _ in calls}.values() for p in m.parameters()]

    def convolutions() -> None:
        for p in conv_params:  # fresh gradients, as the step's (its parameters are inputs)
            p.grad = None
        outputs = [(m(x), g) for m, x, g in convs]
        torch.autograd.backward([o for o, _ in outputs], [g for _, g in outputs])

    def run(provider: str) -> None:
        if provider == "convolutions":
            convolutions()
            return
        with fastflow.set_backend("auto" if provider == "fastflow" else "reference"):
            step(compiled if provider == "compile" else eager)

    times: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    for index in range(rounds + 2):  # two warm-up rounds (the first compiles)
        for provider in PROVIDERS:
            start = time.perf_counter()
            run(provider)
            if index >= 2:
                times[provider].append(time.perf_counter() - start)
    ms = {p: 1e3 * statistics.median(t) for p, t in times.items()}
    flops = convolution_flops(calls)
    per_round = list(zip(*(times[p] for p in PROVIDERS), strict=True))
    share = statistics.median(r[3] / r[1] for r in per_round)  # convolutions / compile
    rest = {p: 1e3 * statistics.median(r[i] - r[3] for r in per_round) for i, p in enumerate(PROVIDERS[:3])}
    return {
        "depth": depth, "batch": batch, "hidden": hidden, "rounds": rounds, "conditioner_calls": len(calls),
        "ms": ms, "rest_ms": rest, "convolution_gflop": flops / 1e9,
        "convolution_gflops": {p: flops / t / 1e6 for p, t in ms.items()},
        "fastflow_vs_compile": statistics.median(r[1] / r[2] for r in per_round),
        "fastflow_vs_reference": statistics.median(r[0] / r[2] for r in per_round),
        "convolutions_share_of_compile": share,
        "max_gain_over_compile": 1.0 / share,
        "rest_ms_for_1p1x_compile": ms["compile"] / 1.1 - ms["convolutions"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.glow_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16, help="K, steps per level")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rate = [1e3 * matmul_rate(torch.device("cpu"), torch.float32, TimingConfig())]
    result = time_providers(args.depth, rounds=args.rounds)
    rate.append(1e3 * matmul_rate(torch.device("cpu"), torch.float32, TimingConfig()))
    result["matmul_gflops"] = {"before": rate[0], "after": rate[1]}
    slug, name = device_description(torch.device("cpu"))
    print(f"Glow 3x32x32, L=3, K={args.depth}, batch {result['batch']}, hidden {result['hidden']}, float32, {name}, "
          f"{torch.get_num_threads()} thread(s); {result['conditioner_calls']} conditioner calls per step; "
          f"median of {args.rounds} rounds")
    print("| provider | step ms | ms besides the convolutions | GFLOP/s of the convolutions' work |")
    print("|---|---:|---:|---:|")
    for provider in PROVIDERS:
        rest = result["rest_ms"].get(provider)
        label = "convolutions alone (not a step)" if provider == "convolutions" else provider
        print(f"| {label} | {result['ms'][provider]:.1f} | {'—' if rest is None else f'{rest:.1f}'} | "
              f"{result['convolution_gflops'][provider]:.0f} |")
    print(f"{result['convolution_gflop']:.1f} GFLOP of convolutions per step; one 2048³ float32 matmul in this run: "
          f"{rate[0]:.0f} GFLOP/s (before), {rate[1]:.0f} (after)")
    print(f"fastflow vs reference {result['fastflow_vs_reference']:.2f}x, "
          f"vs compile {result['fastflow_vs_compile']:.2f}x; "
          f"the convolutions are {result['convolutions_share_of_compile']:.2f} of compile's step: at most "
          f"{result['max_gain_over_compile']:.2f}x over compile with everything else free; 1.1x compile leaves "
          f"{result['rest_ms_for_1p1x_compile']:.1f} ms for everything else")
    report = {"device": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "threads": torch.get_num_threads(), **result}
    write_json_result(args.out, slug, report["date"], "glow-floor", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
