"""The ``fastflow`` command: ``fastflow train`` (Glow, RealNVP or a small coupling flow on the built-in digits or a
given data set) and ``fastflow info`` (which kernel backends are available, and why not)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

MODELS = ("glow", "realnvp", "flow")


def _build_model(args: argparse.Namespace, channels: int, size: int, levels: int):
    """The model named on the command line, sized for the data (``levels`` grey levels)."""
    from fastflow.models import CouplingFlow, Glow, RealNVP

    num_levels = None if levels == 256 else levels
    if args.model == "glow":
        return Glow(channels, size, levels=args.levels, depth=args.depth, hidden_channels=args.hidden,
                    num_levels=num_levels, memory_efficient=args.memory_efficient)
    if args.model == "realnvp":
        return RealNVP(channels, size, levels=args.levels, hidden_channels=args.hidden, num_blocks=args.blocks,
                       num_levels=levels, memory_efficient=args.memory_efficient)
    return CouplingFlow(channels, size, num_couplings=args.couplings, hidden_channels=args.hidden, levels=levels)


def _train(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow.train import TrainConfig, train

    data = fastflow.data.load(args.data)
    channels, height, width = data.shape
    if height != width:
        raise ValueError(f"--data {args.data}: images must be square, got {height}×{width}")
    torch.manual_seed(args.seed)
    model = _build_model(args, channels, height, data.levels)
    out = args.out or os.path.join("runs", f"{args.model}-{data.name}")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         eval_every=args.eval_every, max_minutes=args.max_minutes, out=out)
    print(f"fastflow {fastflow.__version__}: training {args.model} on {data.name} "
          f"({len(data.train)} train / {len(data.test)} test images, {channels}×{height}×{width}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, backend {fastflow.get_backend()})")
    metrics = train(model, data, config, progress=not args.no_progress)
    print(f"done: test {metrics['test_bpd']:.3f} bits/dim after {metrics['step']} steps "
          f"({metrics['seconds']:.0f} s); samples in {os.path.join(out, 'samples.png')}, "
          f"metrics in {os.path.join(out, 'metrics.jsonl')}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow._backends import format_backend_info

    print(f"fastflow {fastflow.__version__}, torch {torch.__version__}, "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    print(format_backend_info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model and write bits/dim, samples and checkpoints")
    train.add_argument("model", nargs="?", default="glow", choices=MODELS, help="model to train (default glow)")
    train.add_argument("--data", default="digits", help="data spec (default: the built-in digits)")
    train.add_argument("--steps", type=int, default=1500)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--levels", type=int, default=2, help="glow/realnvp: number of scales")
    train.add_argument("--depth", type=int, default=8, help="glow: flow steps per level")
    train.add_argument("--couplings", type=int, default=8, help="flow: number of couplings")
    train.add_argument("--hidden", type=int, default=64, help="conditioner width")
    train.add_argument("--blocks", type=int, default=2, help="realnvp: residual blocks per conditioner")
    train.add_argument("--memory-efficient", action="store_true", help="rebuild activations in the backward")
    train.add_argument("--eval-every", type=int, default=250)
    train.add_argument("--max-minutes", type=float, default=None, help="stop when this wall-clock budget is spent")
    train.add_argument("--out", default=None, help="output folder (default runs/<model>-<data>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)
    info = commands.add_parser("info", help="show the kernel backends and why any is unavailable")
    info.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"fastflow: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
