"""The ``fastflow`` command: ``train`` a model (one process, or many under ``torchrun``), ``sample`` from and
``eval`` a trained run, ``bench`` the kernels, ``info`` on the backends.

    fastflow train glow                                     # the built-in digits, a small Glow
    fastflow train --preset glow-cifar10 --data npz:cifar10.npz --out runs/glow
    torchrun --nproc_per_node=8 -m fastflow train --preset glow-cifar10 --data ... --resume
    fastflow sample runs/glow --n 64 --temperature 0.7 --out samples.png
    fastflow eval runs/glow
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["PRESETS", "build_parser", "main"]

#: Configurations of the papers (and of this README's runs): model, model options and training options. Flags
#: given on the command line override them.
PRESETS: dict[str, dict] = {
    "glow-digits": {"model": "glow", "options": {"scales": 2, "depth": 8, "hidden": 64}, "train": {"lr": 2e-3}},
    "glow-cifar10": {
        # Kingma & Dhariwal (2018): 3 levels of 32 steps, affine coupling, LU 1×1 convolution, learned top prior,
        # 512 hidden channels, Adam at 1e-3 with a linear warm-up, 8-bit images, batch 64.
        "model": "glow",
        "options": {"scales": 3, "depth": 32, "hidden": 512, "coupling": "affine", "lu": True, "learn_top": True,
                    "n_bits": 8},
        "train": {"lr": 1e-3, "batch_size": 64, "warmup": 5000, "epochs": 1000.0, "eval_every": 5000},
    },
    "glow-fashion": {
        "model": "glow",
        "options": {"scales": 2, "depth": 8, "hidden": 128},
        "train": {"lr": 1e-3, "batch_size": 64, "eval_every": 500},
    },
    "realnvp-cifar10": {
        # Dinh et al. (2017): 3 scales, residual conditioners of 64 channels and 8 blocks, Adam at 1e-3.
        "model": "realnvp",
        "options": {"scales": 3, "hidden": 64, "blocks": 8},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 100.0, "eval_every": 5000},
    },
    "realnvp-fashion": {
        "model": "realnvp",
        "options": {"scales": 3, "hidden": 32, "blocks": 1},
        "train": {"lr": 1e-3, "batch_size": 64, "eval_every": 500},
    },
    "nice-mnist": {
        # Dinh et al. (2015): 4 additive couplings of 5 hidden layers of 1000 units, logistic prior.
        "model": "nice",
        "options": {"couplings": 4, "hidden": 1000, "layers": 5, "prior": "logistic"},
        "train": {"lr": 1e-3, "batch_size": 200, "optimizer": "adam", "eval_every": 1000},
    },
}

# Model options on the command line: flag -> (option name, type, help).
_MODEL_FLAGS = {
    "--scales": ("scales", int, "glow/realnvp: number of scales (levels)"),
    "--depth": ("depth", int, "glow: flow steps per scale"),
    "--hidden": ("hidden", int, "conditioner width"),
    "--blocks": ("blocks", int, "realnvp: residual blocks per conditioner"),
    "--couplings": ("couplings", int, "nice/flow: number of couplings"),
    "--layers": ("layers", int, "nice: hidden layers per conditioner"),
    "--coupling": ("coupling", str, "glow: affine or additive"),
    "--n-bits": ("n_bits", int, "glow: bits per channel the images are reduced to"),
}
_TRAIN_FLAGS = ("steps", "epochs", "batch_size", "lr", "optimizer", "warmup", "grad_clip", "ema", "seed",
                "eval_every", "checkpoint_every", "keep", "log_every", "max_minutes", "precision", "temperature",
                "num_samples", "device")


def _model_options(args: argparse.Namespace, preset: dict) -> dict:
    options = dict(preset.get("options", {}))
    for _, (name, _, _) in _MODEL_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.no_lu:
        options["lu"] = False
    if args.memory_efficient:
        options["memory_efficient"] = True
    return options


def _train(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow.models.registry import MODELS, build_model
    from fastflow.train import TrainConfig, train

    preset = PRESETS[args.preset] if args.preset else {}
    name = args.model or preset.get("model") or "glow"
    if preset and args.model and args.model != preset["model"]:
        raise ValueError(f"--preset {args.preset} is for {preset['model']}, not {args.model}")
    options = _model_options(args, preset)
    settings = dict(preset.get("train", {}))
    for key in _TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if "epochs" in settings and args.steps is not None:
        settings.pop("epochs")
    if args.epochs is not None:
        settings["steps"] = None
    data = fastflow.data.load(args.data)
    if not isinstance(data, fastflow.data.ImageData):
        raise ValueError(f"--data {args.data}: the models here are image flows; {type(data).__name__} has no model "
                         "to train yet")
    out = args.out or os.path.join("runs", f"{name}-{data.name}")
    torch.manual_seed(settings.get("seed", 0))
    model = build_model(name, data.shape, data.levels, **options)
    spec = {"name": name, "options": options, "vector": MODELS[name].vector}
    config = TrainConfig(out=out, resume=args.resume, model_spec=spec, data_spec=args.data, **settings)
    if int(os.environ.get("RANK", "0")) == 0:
        channels, height, width = data.shape
        print(f"fastflow {fastflow.__version__}: training {name} on {data.name} "
              f"({len(data.train)} train / {len(data.test)} test images, {channels}×{height}×{width}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {os.environ.get('WORLD_SIZE', '1')} "
              f"process(es), backend {fastflow.get_backend()}, {config.precision})")
    metrics = train(model, data, config, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: test {metrics.get('test_bpd', float('nan')):.3f} bits/dim after {metrics['step']} steps; "
              f"samples in {os.path.join(out, 'samples.png')}, metrics in {os.path.join(out, 'metrics.jsonl')}")
    return 0


def _load_run(path: str):
    """``(model, checkpoint)`` from a run folder or a checkpoint file, with the averaged weights if any."""
    from fastflow.models.registry import build_model
    from fastflow.train import load_checkpoint

    file = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    checkpoint = load_checkpoint(file)
    spec = checkpoint.get("model_spec") or {}
    if "name" not in spec:
        raise ValueError(f"{file}: this checkpoint does not say which model it holds (written by an older fastflow)")
    model = build_model(spec["name"], tuple(checkpoint["data_shape"]), checkpoint["levels"], **spec["options"])
    model.load_state_dict(checkpoint["model"])
    if checkpoint.get("ema"):
        from fastflow.train.ema import EMA

        ema = EMA(model)
        ema.load_state_dict(checkpoint["ema"])
        ema.copy_to(model)
    return model.eval(), checkpoint


def _sample(args: argparse.Namespace) -> int:
    import torch

    from fastflow.train import save_grid

    model, checkpoint = _load_run(args.run)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        samples = model.sample(args.n, temperature=args.temperature)
    samples = samples.view(-1, *checkpoint["data_shape"])
    save_grid(samples, args.out, scale=args.scale)
    print(f"{args.n} samples of {checkpoint['model_spec']['name']} (step {checkpoint['step']}, "
          f"temperature {args.temperature}) in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import fastflow
    from fastflow.train.loop import evaluate

    model, checkpoint = _load_run(args.run)
    data = fastflow.data.load(args.data or checkpoint["data_spec"])
    images = data.test if args.split == "test" else data.train
    bpd = evaluate(model, images, vector=checkpoint["model_spec"].get("vector", False), batch_size=args.batch_size)
    print(f"{checkpoint['model_spec']['name']} (step {checkpoint['step']}) on {data.name} {args.split}: "
          f"{bpd:.4f} bits/dim over {len(images)} images")
    return 0


def _bench(args: argparse.Namespace) -> int:
    # The suite lives in bench/ of a source checkout, not in the installed package: look for it from here.
    if os.path.isdir(os.path.join(os.getcwd(), "bench")) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from bench.run import main as bench_main
    except ImportError as error:
        raise ValueError("fastflow bench runs the suite in bench/ of a source checkout: run it from the "
                         f"repository root ({error})") from None
    return bench_main(args.bench_args)


def _info(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow._backends import format_backend_info
    from fastflow.models.registry import MODELS

    print(f"fastflow {fastflow.__version__}, torch {torch.__version__}, "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    print(format_backend_info())
    print("models: " + ", ".join(sorted(MODELS)) + "; presets: " + ", ".join(sorted(PRESETS)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fastflow.models.registry import MODELS

    parser = argparse.ArgumentParser(prog="fastflow", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model: bits/dim, samples, loss curve, checkpoints")
    train.add_argument("model", nargs="?", choices=sorted(MODELS), help="model (default: glow, or the preset's)")
    train.add_argument("--preset", choices=sorted(PRESETS), help="a paper's configuration; flags override it")
    train.add_argument("--data", default="digits",
                       help="digits (built in), fashion-mnist, idx:DIR, npz:PATH, folder:DIR (default digits)")
    train.add_argument("--out", help="run folder (default runs/<model>-<data>)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in --out (start afresh if there is none)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default 1500)")
    length.add_argument("--epochs", type=float, help="passes over the training split, instead of --steps")
    train.add_argument("--batch-size", type=int, help="global batch, split over the processes (default 64)")
    train.add_argument("--lr", type=float, help="learning rate (default 2e-3)")
    train.add_argument("--optimizer", choices=("adam", "adamax"))
    train.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up (default 100)")
    train.add_argument("--grad-clip", type=float, help="gradient-norm clipping (default 100)")
    train.add_argument("--ema", type=float, help="Polyak averaging decay for evaluation and samples (default 0.999)")
    train.add_argument("--seed", type=int)
    train.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: autocast, float32 master weights")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--eval-every", type=int, help="steps between evaluations and sample grids (default 250)")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)")
    train.add_argument("--keep", type=int, help="checkpoints kept (default 3)")
    train.add_argument("--log-every", type=int, help="steps between lines of metrics.jsonl (default 10)")
    train.add_argument("--max-minutes", type=float, help="stop when this wall-clock budget is spent")
    train.add_argument("--temperature", type=float, help="sampling temperature of the grids (default 0.7)")
    train.add_argument("--num-samples", type=int, help="images per sample grid (default 64)")
    for flag, (name, kind, text) in _MODEL_FLAGS.items():
        extra = ("--levels",) if flag == "--scales" else ()
        train.add_argument(flag, *extra, dest=name, type=kind, help=text)
    train.add_argument("--no-lu", action="store_true", help="glow: plain 1×1 convolution weights")
    train.add_argument("--memory-efficient", action="store_true", help="rebuild activations in the backward")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    sample = commands.add_parser("sample", help="a PNG grid of samples from a trained run")
    sample.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=0.7)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--scale", type=int, default=4, help="pixels per image pixel in the PNG")
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(handler=_sample)

    evaluation = commands.add_parser("eval", help="bits/dim of a trained run on a data split")
    evaluation.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    evaluation.add_argument("--data", help="data spec (default: the run's)")
    evaluation.add_argument("--split", choices=("test", "train"), default="test")
    evaluation.add_argument("--batch-size", type=int, default=500)
    evaluation.set_defaults(handler=_eval)

    bench = commands.add_parser("bench", help="the benchmark suite (python -m bench; from a source checkout)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m bench")
    bench.set_defaults(handler=_bench)

    info = commands.add_parser("info", help="the kernel backends (and why any is unavailable), models, presets")
    info.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        print(f"fastflow: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
