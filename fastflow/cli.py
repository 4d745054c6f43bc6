"""The ``fastflow`` command: ``train`` a model (one process, or many under ``torchrun``), ``sample`` from and
``eval`` a trained run, ``bench`` the kernels, ``presets`` and ``info`` on the backends.

Every bad value is refused before any work, with one line ``fastflow: error: ...`` on stderr and exit status 2:
numeric options by the argparse ``type=`` validators of :mod:`fastflow._arguments` (the message names the option),
the run folder (``--out``) and the device at the start of the command, and any ``OSError`` that reaches
:func:`main` as ``cannot write PATH: permission denied`` (never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable

from fastflow._arguments import (
    DEVICES,
    check_device,
    check_out_file,
    check_out_folder,
    describe_os_error,
    doing,
    fraction,
    int_between,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    rank,
    shape_text,
    warn,
)
from fastflow.presets import PRESETS, format_presets
from fastflow.train.checkpoint import BEST
from fastflow.train.objective import unit_for, unit_named
from fastflow.train.run import CHECKPOINTS

CHECKPOINT_HELP = ("of a run folder: best (checkpoint-best.pt, the best validation score, when the data has a "
                   "validation split; else the latest) or latest (checkpoint.pt); default best")

__all__ = ["PRESETS", "build_parser", "format_presets", "main"]

# Model options on the command line: flag -> (option name, type, help).
_MODEL_FLAGS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "--scales": ("scales", positive_int, "glow/realnvp: number of scales (levels)"),
    "--depth": ("depth", positive_int, "glow: flow steps per scale"),
    "--hidden": ("hidden", positive_int, "conditioner width (channels or units); pixelcnn: channels; charrnn: the "
                 "recurrent layers' width"),
    "--blocks": ("blocks", positive_int, "realnvp: residual blocks per conditioner"),
    "--couplings": ("couplings", positive_int, "nice/flow: number of couplings"),
    "--layers": ("layers", positive_int, "nice/made: hidden layers (per conditioner); maf: flow layers; pixelcnn: "
                 "residual blocks (gated: layers after the first); charrnn: recurrent layers"),
    "--kernel": ("kernel", positive_int, "pixelcnn: the first layer's (odd) kernel size (7)"),
    "--residual-kernel": ("residual_kernel", positive_int, "pixelcnn: every later layer's (odd) kernel size (3)"),
    "--masks": ("masks", positive_int, "made: mask sets, one per minibatch in training, averaged in evaluation"),
    "--coupling": ("coupling", str, "glow: affine or additive"),
    "--n-bits": ("n_bits", int_between(1, 8), "glow: bits per channel the images are reduced to (1..8)"),
    "--cell": ("cell", str, "charrnn: lstm (default) or rnn (tanh)"),
    "--dropout": ("dropout", fraction, "charrnn: dropout between the recurrent layers and before the output, in "
                  "[0, 1) (default 0)"),
    "--embedding": ("embedding", positive_int, "charrnn: character embedding width (default: the vocabulary size, "
                    "at most --hidden)"),
}
# Model switches: flag -> (option name, the value the flag sets, help).
_MODEL_SWITCHES: dict[str, tuple[str, object, str]] = {
    "--no-lu": ("lu", False, "glow: plain 1×1 convolution weights"),
    "--memory-efficient": ("memory_efficient", True, "glow/realnvp: rebuild activations in the backward"),
    "--natural-ordering": ("natural_ordering", True, "made: the data's order instead of a random one"),
    "--direct": ("direct", True, "made: direct (masked) input-to-output connections"),
    "--gated": ("gated", True, "pixelcnn: the Gated PixelCNN (vertical and horizontal stacks, no blind spot)"),
}
_MODEL_CHOICES = {"coupling": ("affine", "additive"), "cell": ("lstm", "rnn")}
_TRAIN_FLAGS = ("steps", "epochs", "batch_size", "lr", "optimizer", "warmup", "lr_decay", "weight_decay", "grad_clip",
                "ema", "seed", "eval_every", "checkpoint_every", "keep", "log_every", "max_minutes", "precision",
                "temperature", "num_samples", "device", "seq_len", "compile")


# --------------------------------------------------------------------------------------------------
# The commands.


def _model_options(args: argparse.Namespace, preset: dict) -> tuple[dict, set[str]]:
    """The model options (the preset's, then the flags') and the names of those the flags gave."""
    options = dict(preset.get("options", {}))
    explicit: set[str] = set()
    for name, _, _ in _MODEL_FLAGS.values():
        value = getattr(args, name)
        if value is not None:
            options[name] = value
            explicit.add(name)
    for flag, (name, value, _) in _MODEL_SWITCHES.items():
        if getattr(args, flag[2:].replace("-", "_")):
            options[name] = value
            explicit.add(name)
    return options, explicit


def _check_model_options(name: str, options: dict) -> None:
    from fastflow.models.registry import MODELS

    unknown = sorted(set(options) - set(MODELS[name].options))
    if unknown:
        flags = ", ".join("--" + option.replace("_", "-") for option in unknown)
        raise ValueError(f"model {name!r} takes no option {', '.join(unknown)} ({flags}); its options: "
                         f"{', '.join(MODELS[name].options)}")
    for option, allowed in _MODEL_CHOICES.items():
        if option in options and options[option] not in allowed:
            raise ValueError(f"--{option} must be one of {', '.join(allowed)}, got {options[option]!r}")


def _train(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow.models.registry import MODELS, build_model
    from fastflow.train import TrainConfig, train
    from fastflow.train.checkpoint import check_fresh_start
    from fastflow.train.lock import RunLock
    from fastflow.train.monitor import check_tensorboard
    from fastflow.train.run import resume_options

    # Everything that can be checked without data or a model, first.
    preset = PRESETS[args.preset] if args.preset else {}
    name = args.model or preset.get("model") or "glow"
    if preset and args.model and args.model != preset["model"]:
        raise ValueError(f"--preset {args.preset} is for {preset['model']}, not {args.model}")
    options, explicit = _model_options(args, preset)
    settings = dict(preset.get("train", {}))
    for key in _TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if "epochs" in settings and args.steps is not None:
        settings.pop("epochs")
    if args.epochs is not None:
        settings["steps"] = None
    check_device(settings.get("device"))
    if args.tensorboard is not None:
        check_tensorboard()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = settings.get("batch_size", TrainConfig.batch_size)
    if batch % world:
        raise ValueError(f"--batch-size {batch} (the global batch) must be divisible by the {world} processes")

    def resumed(out: str) -> None:
        """A fresh start over a run's checkpoints needs --overwrite; --resume takes the run's model."""
        nonlocal name, options
        RunLock(out).check()  # a second writer is refused before any work
        if not args.resume and not args.overwrite:
            check_fresh_start(out)
        if args.resume:
            with doing("read", out):
                found = resume_options(out, args.model, options, explicit)
            if found is not None:
                name, options = found

    if args.out is not None:
        check_out_folder(args.out)
        resumed(args.out)
    _check_model_options(name, options)
    if args.data is None:  # after --resume has named the run's model: a text model's default is text
        args.data = preset.get("data", {}).get("spec", MODELS[name].default_data)

    with doing("read"):
        data = fastflow.data.load(args.data)
    text = isinstance(data, fastflow.data.TextData)
    if MODELS[name].data != ("text" if text else "images"):
        if text:
            raise ValueError(f"--data {args.data} is text: {name} models images; train a text model such as charrnn "
                             "on it")
        raise ValueError(f"--data {args.data} is images: {name} models text; give text such as --data pysource, "
                         "tinyshakespeare or text:PATH")
    out = args.out
    if out is None:
        out = os.path.join("runs", f"{name}-{data.name}")
        check_out_folder(out, "--out (default)")
        resumed(out)
        _check_model_options(name, options)
    if text:
        seq_len = settings.get("seq_len", TrainConfig.seq_len)
        if batch * seq_len + seq_len > len(data.train):
            raise ValueError(f"--batch-size {batch} streams of --seq-len {seq_len} characters need at least "
                             f"{batch * seq_len + seq_len} training characters; --data {args.data} has "
                             f"{len(data.train)}: lower them")
    elif batch > len(data.train):
        raise ValueError(f"--batch-size {batch} exceeds the {len(data.train)} training images of --data {args.data}")

    torch.manual_seed(settings.get("seed", 0))
    model = build_model(name, data.shape, data.levels, vocab=data.vocab if text else None, **options)
    parameters = sum(p.numel() for p in model.parameters())
    made_for = preset.get("data")
    if made_for and tuple(made_for["shape"]) != tuple(data.shape):
        warn(f"preset {args.preset} was made for {made_for['name']} {shape_text(made_for['shape'])}; "
              f"--data {args.data} is {shape_text(data.shape)} (the model has {parameters:,} parameters)")
    spec = {"name": name, "options": options, "vector": MODELS[name].vector}
    tensorboard = None if args.tensorboard is None else (args.tensorboard or os.path.join(out, "tensorboard"))
    config = TrainConfig(out=out, resume=args.resume, overwrite=args.overwrite, model_spec=spec, data_spec=args.data,
                         tensorboard=tensorboard, **settings)
    if rank() == 0:
        if text:
            valid = f"{len(data.valid):,} valid / " if data.valid is not None else ""
            what = (f"{len(data.train):,} train / {valid}{len(data.test):,} test characters, a vocabulary of "
                    f"{data.vocab_size}, --seq-len {config.seq_len}")
        else:
            channels, height, width = data.shape
            what = f"{len(data.train)} train / {len(data.test)} test images, {channels}×{height}×{width}"
        print(f"fastflow {fastflow.__version__}: training {name} on {data.name} ({what}, {parameters:,} parameters, "
              f"{world} process(es), backend {fastflow.get_backend()}, {config.precision})")
    with doing("write", out):
        metrics = train(model, data, config, progress=not args.no_progress)
    if rank() == 0:
        unit = unit_named(metrics["unit"]) if "unit" in metrics else unit_for(data.levels)
        test = metrics.get(f"test_{unit.key}")
        score = f"test {test:.3f} {unit.name}" if test is not None else "no evaluation"
        samples = os.path.join(out, "samples.txt" if text else "samples.png")
        print(f"done: {score} after {metrics['step']} steps; samples in {samples}, "
              f"metrics in {os.path.join(out, 'metrics.jsonl')}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from fastflow.train import save_grid
    from fastflow.train.checkpoint import CheckpointError
    from fastflow.train.run import load_run

    device = check_device(args.device)
    # A .txt --out is a text run's; any other is checked as an image file's before the run is read, as ever.
    text_out = args.out is not None and os.path.splitext(args.out)[1].lower() == ".txt"
    if args.out is not None and not text_out:
        check_out_file(args.out)
    try:
        with doing("read", args.run):
            run = load_run(args.run, device=device, checkpoint=args.checkpoint)
    except CheckpointError:
        if text_out:
            check_out_file(args.out)  # no text run to sample: the image run's complaint about --out comes first
        raise
    if run.text:
        return _sample_text(args, run)
    if text_out or args.prime is not None or args.length is not None:
        check_out_file(args.out or "samples.png")
        raise ValueError(f"--prime and --length are for a text model's run; {run.path} holds {run.name}, which makes "
                         "images")
    out = args.out or "samples.png"
    check_out_file(out)
    n = 64 if args.n is None else args.n
    samples = run.sample(n, temperature=args.temperature, seed=args.seed)
    with doing("write", out):
        save_grid(samples, out, scale=args.scale)
    temperature = "default" if args.temperature is None else f"{args.temperature:g}"
    print(f"{n} samples of {run.name} (step {run.step}, temperature {temperature}, seed {args.seed}) in {out}")
    return 0


def _sample_text(args: argparse.Namespace, run) -> int:
    """``fastflow sample`` of a text model's run: the texts printed, or written to a ``.txt`` ``--out``."""
    from fastflow.train.text import format_samples

    if args.out is not None:
        check_out_file(args.out, text=True)
    n = 4 if args.n is None else args.n
    temperature = 1.0 if args.temperature is None else args.temperature
    texts = run.sample(n, temperature=temperature, seed=args.seed, length=args.length, prime=args.prime)
    content = format_samples(texts, f"{run.name}, step {run.step}, temperature {temperature:g}, seed {args.seed}")
    if args.out is None:
        sys.stdout.write(content)
        return 0
    with doing("write", args.out), open(args.out, "w", encoding="utf-8") as file:
        file.write(content)
    print(f"{n} samples of {run.name} (step {run.step}, temperature {temperature:g}, seed {args.seed}) in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import fastflow
    from fastflow.train.loop import evaluate
    from fastflow.train.run import load_run

    device = check_device(args.device)
    with doing("read", args.run):
        run = load_run(args.run, device=device, checkpoint=args.checkpoint)
    spec = args.data or run.data_spec
    with doing("read"):
        data = fastflow.data.load(spec)
    if run.text:
        return _eval_text(args, run, data, spec)
    if not isinstance(data, fastflow.data.ImageData):
        raise ValueError(f"--data {spec}: {type(data).__name__} is not image data")
    if tuple(data.shape) != run.data_shape:
        raise ValueError(f"--data {spec} is {shape_text(data.shape)}, but the run {run.path} was trained on "
                         f"{shape_text(run.data_shape)} images")
    images = {"test": data.test, "train": data.train, "valid": data.valid}[args.split]
    if images is None:
        raise ValueError(f"--split valid: --data {spec} has no validation split")
    score = evaluate(run.model, images, vector=run.vector, batch_size=args.batch_size, unit=run.unit)
    chosen = " (the best validation score)" if os.path.basename(run.path) == BEST else ""
    print(f"{run.name} (step {run.step}{chosen}) on {data.name} {args.split}: {score:.4f} {run.unit.name} over "
          f"{len(images)} images")
    return 0


def _eval_text(args: argparse.Namespace, run, data, spec: str) -> int:
    """``fastflow eval`` of a text model's run: nats per character of the split, read as one text."""
    import fastflow
    from fastflow.train.text import evaluate_text

    if not isinstance(data, fastflow.data.TextData):
        raise ValueError(f"--data {spec}: the run {run.path} is a text model's; {type(data).__name__} is not text")
    if run.model.vocab not in (None, data.vocab):
        raise ValueError(f"--data {spec} has another vocabulary ({data.vocab_size} characters) than the text the run "
                         f"{run.path} was trained on ({run.model.vocab_size})")
    tokens = {"test": data.test, "train": data.train, "valid": data.valid}[args.split]
    if tokens is None:
        raise ValueError(f"--split valid: --data {spec} has no validation split")
    score = evaluate_text(run.model, tokens)
    chosen = " (the best validation score)" if os.path.basename(run.path) == BEST else ""
    print(f"{run.name} (step {run.step}{chosen}) on {data.name} {args.split}: {score:.4f} {run.unit.name} over "
          f"{len(tokens):,} characters")
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


def _presets(args: argparse.Namespace) -> int:
    print(format_presets())
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    import fastflow
    from fastflow._backends import format_backend_info
    from fastflow.models.registry import MODELS

    print(f"fastflow {fastflow.__version__}, torch {torch.__version__}, "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    print(format_backend_info())
    print("models: " + ", ".join(sorted(MODELS)) + "; presets: " + ", ".join(sorted(PRESETS)))
    if args.presets:
        print()
        print(format_presets())
    else:
        print("(fastflow presets, or fastflow info --presets, shows what each preset sets)")
    return 0


# --------------------------------------------------------------------------------------------------
# The parser.

_DESCRIPTION = """\
fastflow trains normalizing flows (Glow, RealNVP, NICE and a small coupling flow) and autoregressive models (FVSBN,
NADE, MADE, MAF, PixelCNN) on image data and a character-level language model (CharRNN) on text, in one process or
in several under torchrun, and reports bits/dim (nats, nats/char), samples, loss curves and checkpoints. It also
draws samples from a trained run, evaluates one on a data split, runs the kernel benchmarks and shows which kernel
backends this machine has."""

_EPILOG = """\
examples:
  fastflow train glow                          a small Glow on the built-in digits
  fastflow train glow --data fashion-mnist --out runs/glow-fmnist
  fastflow train --preset glow-cifar10 --data npz:cifar10.npz --out runs/glow --precision bf16
  torchrun --nproc_per_node=8 -m fastflow train --preset glow-cifar10 --data npz:cifar10.npz --out runs/glow --resume
  fastflow train --preset charrnn-shakespeare --out runs/shakespeare
  fastflow sample runs/glow --n 64 --temperature 0.7 --out samples.png
  fastflow sample runs/shakespeare --n 2 --prime "ROMEO:" --temperature 0.8
  fastflow eval runs/glow                      test bits/dim with the averaged weights
  fastflow presets                             what each preset sets
  fastflow info                                the kernel backends, models and presets

Run fastflow COMMAND --help for the options of a command."""

_TRAIN_EPILOG = """\
examples:
  fastflow train glow --steps 200 --hidden 16 --depth 2
  fastflow train --preset glow-fashion --data fashion-mnist --out runs/glow-fmnist
  fastflow train --preset glow-fashion --data fashion-mnist --out runs/glow-fmnist --resume
  fastflow train charrnn --hidden 128 --steps 300
  fastflow train --preset charrnn-shakespeare --out runs/shakespeare

A preset sets a model, its options and training settings (fastflow presets lists them); flags override it."""


def build_parser() -> argparse.ArgumentParser:
    from fastflow.models.registry import MODELS

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="fastflow", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")

    train = commands.add_parser(
        "train", help="train a model: bits/dim, samples, loss curve, checkpoints", formatter_class=raw,
        description="Train a model on a data set: evaluations in bits/dim, PNG sample grids and the loss curve,\n"
                    "metrics.jsonl and atomic checkpoints in the run folder (--out).", epilog=_TRAIN_EPILOG)
    train.add_argument("model", nargs="?", choices=sorted(MODELS), help="model (default: glow, or the preset's)")
    train.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                       help=f"a paper's configuration, one of {', '.join(sorted(PRESETS))} (fastflow presets "
                            "shows what each sets); flags override it")
    train.add_argument("--data",
                       help="images: digits (built in), fashion-mnist, binarized-mnist, idx:DIR, npz:PATH, folder:DIR; "
                            "text: pysource (built in: the Python library's source), tinyshakespeare, text:PATH "
                            "(default: the preset's data set if it names one, else digits, or pysource for charrnn)")
    train.add_argument("--out", help="run folder (default runs/<model>-<data>)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest intact checkpoint in --out (start afresh if there is none)")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in an --out that holds a run's checkpoints, deleting them")
    train.add_argument("--tensorboard", nargs="?", const="", metavar="DIR",
                       help="also log to TensorBoard: losses, learning rate, gradient norm, throughput, sample grids "
                            "(default DIR: <out>/tensorboard; needs the tensorboard package)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimiser steps (default 1500)")
    length.add_argument("--epochs", type=positive_float, help="passes over the training split, instead of --steps")
    train.add_argument("--batch-size", type=positive_int, help="global batch, split over the processes (default 64)")
    train.add_argument("--lr", type=positive_float, help="learning rate (default 2e-3)")
    train.add_argument("--optimizer", choices=("adam", "adamax"), help="the optimiser (default adam)")
    train.add_argument("--warmup", type=non_negative_int, help="steps of linear learning-rate warm-up (default 100)")
    train.add_argument("--lr-decay", choices=("none", "cosine"),
                       help="after the warm-up: none (default, constant) or cosine (down to 0 at the last step)")
    train.add_argument("--weight-decay", type=non_negative_float,
                       help="decoupled weight decay per step, times the learning rate (AdamW; default 0)")
    train.add_argument("--grad-clip", type=positive_float, help="gradient-norm clipping (default 100)")
    train.add_argument("--ema", type=probability,
                       help="Polyak averaging decay in (0, 1) for evaluation and samples (default 0.999)")
    train.add_argument("--seed", type=non_negative_int, help="seed of the data order, noise and weights (default 0)")
    train.add_argument("--precision", choices=("fp32", "bf16"),
                       help="fp32 (default), or bf16: autocast with float32 master weights")
    train.add_argument("--device", choices=DEVICES, help="auto (default: cuda if there is a GPU), cpu or cuda")
    train.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the training step (fastflow's ops inside it; not with --memory-efficient)")
    train.add_argument("--eval-every", type=positive_int,
                       help="steps between evaluations and sample grids (default 250)")
    train.add_argument("--checkpoint-every", type=positive_int,
                       help="steps between checkpoints (default: --eval-every)")
    train.add_argument("--keep", type=positive_int, help="checkpoints kept (default 3)")
    train.add_argument("--log-every", type=positive_int, help="steps between lines of metrics.jsonl (default 10)")
    train.add_argument("--max-minutes", type=positive_float, help="stop when this wall-clock budget is spent")
    train.add_argument("--temperature", type=non_negative_float,
                       help="sampling temperature of the grids (default 0.7 for flows, 1 for discrete models)")
    train.add_argument("--num-samples", type=positive_int,
                       help="images per sample grid (default 64); texts per samples file for charrnn")
    train.add_argument("--seq-len", "--bptt", dest="seq_len", type=positive_int,
                       help="charrnn: characters per truncated back-propagation-through-time segment (default 100)")
    for flag, (name, kind, text) in _MODEL_FLAGS.items():
        extra = ("--levels",) if flag == "--scales" else ()
        choices = _MODEL_CHOICES.get(name)
        train.add_argument(flag, *extra, dest=name, type=kind, choices=choices, help=text)
    for flag, (_, _, text) in _MODEL_SWITCHES.items():
        train.add_argument(flag, action="store_true", help=text)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    sample = commands.add_parser(
        "sample", help="a PNG grid of samples from a trained run (texts for a text model)",
        description="Draw samples from a trained run (with its averaged weights) and save them as one PNG grid; a "
                    "text model's samples are printed, or written to a .txt --out.")
    sample.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    sample.add_argument("--n", type=positive_int, help="number of samples (default 64; 4 texts for a text model)")
    sample.add_argument("--temperature", type=non_negative_float,
                        help="sampling temperature, 0 for the mode (default 0.7 for flows, 1 for discrete models)")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    sample.add_argument("--scale", type=positive_int, default=4, help="pixels per image pixel in the PNG (default 4)")
    sample.add_argument("--out", help="the PNG file written (default samples.png); for a text model a .txt file "
                                      "(default: print the samples)")
    sample.add_argument("--length", type=non_negative_int,
                        help="text model: characters drawn after the prime (default 500)")
    sample.add_argument("--prime", help="text model: the text the samples start with (default none)")
    sample.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help=CHECKPOINT_HELP)
    sample.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default: cuda if there is a GPU), cpu or cuda")
    sample.set_defaults(handler=_sample)

    evaluation = commands.add_parser(
        "eval", help="bits/dim (nats for binary data, nats/char for text) of a trained run on a data split",
        description="Bits/dim (nats for binary data, nats/char for text) of a trained run (with its averaged weights) "
                    "on the test, validation or train split.")
    evaluation.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    evaluation.add_argument("--data", help="data spec (default: the run's)")
    evaluation.add_argument("--split", choices=("test", "valid", "train"), default="test",
                            help="the split (default test)")
    evaluation.add_argument("--batch-size", type=positive_int, default=500,
                            help="images per batch (default 500; text is scored as one sequence)")
    evaluation.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help=CHECKPOINT_HELP)
    evaluation.add_argument("--device", choices=DEVICES, default="auto",
                            help="auto (default: cuda if there is a GPU), cpu or cuda")
    evaluation.set_defaults(handler=_eval)

    bench = commands.add_parser("bench", help="the benchmark suite (python -m bench; from a source checkout)",
                                description="Run the benchmark suite of bench/ (from a source checkout).")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m bench")
    bench.set_defaults(handler=_bench)

    presets = commands.add_parser("presets", help="what each preset sets: model, options, training, data set",
                                  description="A table of the presets of fastflow train --preset.")
    presets.set_defaults(handler=_presets)

    info = commands.add_parser("info", help="the kernel backends (why any cannot run), models, presets",
                               description="The kernel backends this machine has (and why any cannot run), the "
                                           "models and the presets.")
    info.add_argument("--presets", action="store_true", help="also the table of what each preset sets")
    info.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; a bad value or a failed file operation is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("fastflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pipe closed early (fastflow info | head): stop quietly
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        print(f"fastflow: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FloatingPointError) as error:
        print(f"fastflow: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
