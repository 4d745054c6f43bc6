"""Peak memory of one Glow training step, standard autograd against the memory-saving backprop.

``python -m bench.glow_memory [--depths 4,16] [--batch 16] [--hidden 128] [--device cpu]`` builds Glow on
``3×32×32`` (``L = 3``), runs one step to initialise ActNorm and allocate the gradients and the optimiser state,
then measures the next step (forward + backward + Adam update): the largest amount of memory allocated during
it above what was live before (``bench.harness.peak_memory_bytes``: the CPU allocator's events seen by the
profiler, or CUDA's peak statistics). Parameters, gradients and optimiser moments are live before the step and
so not counted: what is left is the activations a step keeps for its backward, the part that grows with depth.
Each measurement runs in a child process of its own, so that no allocation of another one is seen.
Prints a table and one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from bench.harness import peak_memory_bytes

__all__ = ["measure", "measure_in_child"]


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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-efficient", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    options = dict(batch=args.batch, hidden=args.hidden, device=args.device)
    if args.child:
        print(json.dumps(measure(depths[0], args.memory_efficient, **options)))
        return 0
    rows = [measure_in_child(depth, efficient, **options) for depth in depths for efficient in (False, True)]
    print(f"Glow 3x32x32, L=3, batch {args.batch}, hidden {args.hidden}, {args.device}: peak MB of one training step")
    print(f"{'K':>4} {'standard':>10} {'memory-saving':>14} {'ratio':>7}")
    for depth in depths:
        standard, efficient = (r["peak_bytes"] for r in rows if r["depth"] == depth)
        print(f"{depth:>4} {standard / 2**20:>10.1f} {efficient / 2**20:>14.1f} {efficient / standard:>7.3f}")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
