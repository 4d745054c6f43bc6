"""Peak memory and time of one Glow training step, standard autograd against the memory-saving backprop.

``python -m bench.glow_memory [--depths 4,16] [--batch 16] [--hidden 128] [--rounds 9] [--device cpu]
[--out bench/results]`` builds Glow on ``3×32×32`` (``L = 3``) for each depth ``K``.

Memory: one step (forward + backward + Adam update) initialises ActNorm and allocates the gradients and the
optimiser state, then the next step is measured: the largest amount of memory allocated during it above what
was live before (``bench.harness.peak_memory_bytes``: the CPU allocator's events seen by the profiler, or CUDA's
peak statistics). Parameters, gradients and optimiser moments are live before the step and so not counted: what
is left is the activations a step keeps for its backward, the part that grows with depth. Each measurement runs
in a child process of its own, so that no allocation of another one is seen.

Time: the two models (the same weights) in one process, taking turns: each round runs one standard step, then one
memory-saving step, on the next of three input batches; after two warm-up rounds, the median of each one's step
times and the median of the rounds' ratios (a ratio within one round does not see this machine's drift between
rounds). A step is what a user pays: the forward in bits/dim, the backward, Adam's update. Each round also times
the standard model's forward without autograd, what the memory-saving step adds at the least: its share of a
standard step (median of the rounds) bounds the time ratio from below.

Prints a table and writes ``<device>-<date>-glow-memory.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.harness import device_description, peak_memory_bytes, write_json_result

__all__ = ["measure", "measure_in_child", "time_steps"]

RESULTS = Path(__file__).parent / "results"


def measure(
    depth: int,
    memory_efficient: bool,
    *,
    batch: int = 16,
    hidden: int = 128,
    image_size: int = 32,
    channels: int = 3,
    levels: int = 3,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Peak bytes of one Glow training step above the live model state (in this process)."""
    from fastflow.models import Glow

    torch.manual_seed(seed)
    model = Glow(channels, image_size, levels=levels, depth=depth, hidden_channels=hidden,
                 memory_efficient=memory_efficient).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, channels, image_size, image_size), dtype=torch.uint8, device=device)

    def step() -> None:
        loss = model.bits_per_dim(x).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as the model state does

    step()  # ActNorm's initialisation; gradients and Adam's moments allocated
    peak = peak_memory_bytes(step, torch.device(device))
    return {
        "depth": depth,
        "memory_efficient": memory_efficient,
        "batch": batch,
        "hidden": hidden,
        "levels": levels,
        "image": [channels, image_size, image_size],
        "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_bytes": peak,
    }


def time_steps(depth: int, *, rounds: int = 9, batch: int = 16, hidden: int = 128, image_size: int = 32,
               channels: int = 3, levels: int = 3, device: str = "cpu", seed: int = 0) -> dict:
    """Median seconds of a standard and of a memory-saving Glow training step, taking turns, and the median of the
    rounds' ratios (memory-saving / standard)."""
    from fastflow.models import Glow

    dev = torch.device(device)
    models, optimizers = {}, {}
    for efficient in (False, True):
        torch.manual_seed(seed)
        models[efficient] = Glow(channels, image_size, levels=levels, depth=depth, hidden_channels=hidden,
                                 memory_efficient=efficient).to(dev)
    generator = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randint(0, 256, (batch, channels, image_size, image_size), dtype=torch.uint8,
                        generator=generator).to(dev) for _ in range(3)]
    with torch.no_grad():  # ActNorm's initialisation, then the same weights in both
        models[False].bits_per_dim(xs[0])
    models[True].load_state_dict(models[False].state_dict())
    for efficient, model in models.items():
        optimizers[efficient] = torch.optim.Adam(model.parameters(), lr=1e-4)

    def timed(call, *args) -> float:
        """Seconds of ``call(*args)``, the device's queue drained before and after."""
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        call(*args)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    def train_step(efficient: bool, x: torch.Tensor) -> None:
        model, optimizer = models[efficient], optimizers[efficient]
        model.bits_per_dim(x).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_alone(x: torch.Tensor) -> None:  # what the memory-saving step adds: a forward without autograd
        with torch.no_grad():
            models[False].bits_per_dim(x)

    times: dict[bool, list[float]] = {False: [], True: []}
    forwards: list[float] = []
    for index in range(rounds + 2):
        x = xs[index % len(xs)]
        pair = {efficient: timed(train_step, efficient, x) for efficient in (False, True)}
        forward = timed(forward_alone, x)
        if index >= 2:
            for efficient, seconds in pair.items():
                times[efficient].append(seconds)
            forwards.append(forward)
    ratios = [e / s for s, e in zip(times[False], times[True], strict=True)]
    return {"depth": depth, "rounds": rounds, "standard_s": statistics.median(times[False]),
            "memory_saving_s": statistics.median(times[True]), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "no_grad_forward_s": statistics.median(forwards),
            "no_grad_forward_share": statistics.median(f / s for f, s in zip(forwards, times[False], strict=True))}


def measure_in_child(depth: int, memory_efficient: bool, **options) -> dict:
    """:func:`measure` in a fresh Python process (nothing else allocated there); returns its result."""
    args = [sys.executable, "-m", "bench.glow_memory", "--child", "--depths", str(depth)]
    args += ["--memory-efficient"] if memory_efficient else []
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child measurement failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.glow_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="4,16", help="comma-separated K (steps per level)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per depth (0: memory only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--memory-efficient", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    options = dict(batch=args.batch, hidden=args.hidden, device=args.device)
    if args.child:
        print(json.dumps(measure(depths[0], args.memory_efficient, **options)))
        return 0
    rows = [measure_in_child(depth, efficient, **options) for depth in depths for efficient in (False, True)]
    timings = {depth: time_steps(depth, rounds=args.rounds, **options) for depth in depths} if args.rounds else {}
    slug, name = device_description(torch.device(args.device))
    print(f"Glow 3x32x32, L=3, batch {args.batch}, hidden {args.hidden}, float32, {name}, "
          f"{torch.get_num_threads()} thread(s): one training step")
    print("| K | peak MB, standard | peak MB, memory-saving | ratio | ms, standard | ms, memory-saving | time ratio "
          "(min-max) | no-grad forward, of a standard step |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for depth in depths:
        standard, efficient = (r["peak_bytes"] for r in rows if r["depth"] == depth)
        line = f"| {depth} | {standard / 2**20:.1f} | {efficient / 2**20:.1f} | {efficient / standard:.3f} |"
        if depth in timings:
            t = timings[depth]
            line += (f" {1e3 * t['standard_s']:.0f} | {1e3 * t['memory_saving_s']:.0f} | {t['ratio']:.3f} "
                     f"({t['ratio_min']:.2f}-{t['ratio_max']:.2f}) | {t['no_grad_forward_share']:.2f} |")
        else:
            line += " | | | |"
        print(line)
    report = {"device": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "threads": torch.get_num_threads(), "batch": args.batch, "hidden": args.hidden,
              "memory": rows, "time": list(timings.values())}
    write_json_result(args.out, slug, report["date"], "glow-memory", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
