"""The ``fastflow`` command: ``train`` a model (one process, or many under ``torchrun``), ``sample`` from and
``eval`` a trained run, ``bench`` the kernels, ``presets`` and ``info`` on the backends.

Every bad value is refused before any work, with one line ``fastflow: error: ...`` on stderr and exit status 2:
numeric options by the argparse ``type=`` validators below (the message names the option), the run folder
(``--out``) and the device at the start of the command, and any ``OSError`` that reaches :func:`main` as
``cannot write PATH: permission denied`` (never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator

__all__ = ["PRESETS", "build_parser", "format_presets", "main"]

#: Configurations of the papers (and of this README's runs): model, model options, training options, and the data
#: set the preset was made for (its name and shape ``(C, H, W)``). Flags given on the command line override them.
PRESETS: dict[str, dict] = {
    "glow-digits": {
        "model": "glow",
        "options": {"scales": 2, "depth": 8, "hidden": 64},
        "train": {"lr": 2e-3},
        "data": {"name": "digits", "shape": (1, 8, 8)},
    },
    "glow-cifar10": {
        # Kingma & Dhariwal (2018): 3 levels of 32 steps, affine coupling, LU 1×1 convolution, learned top prior,
        # 512 hidden channels, Adam at 1e-3 with a linear warm-up, 8-bit images, batch 64.
        "model": "glow",
        "options": {"scales": 3, "depth": 32, "hidden": 512, "coupling": "affine", "lu": True, "learn_top": True,
                    "n_bits": 8},
        "train": {"lr": 1e-3, "batch_size": 64, "warmup": 5000, "epochs": 1000.0, "eval_every": 5000},
        "data": {"name": "CIFAR-10", "shape": (3, 32, 32)},
    },
    "glow-fashion": {
        "model": "glow",
        "options": {"scales": 2, "depth": 8, "hidden": 128},
        "train": {"lr": 1e-3, "batch_size": 64, "eval_every": 500},
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28)},
    },
    "realnvp-cifar10": {
        # Dinh et al. (2017): 3 scales, residual conditioners of 64 channels and 8 blocks, Adam at 1e-3.
        "model": "realnvp",
        "options": {"scales": 3, "hidden": 64, "blocks": 8},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 100.0, "eval_every": 5000},
        "data": {"name": "CIFAR-10", "shape": (3, 32, 32)},
    },
    "realnvp-fashion": {
        "model": "realnvp",
        "options": {"scales": 3, "hidden": 32, "blocks": 1},
        "train": {"lr": 1e-3, "batch_size": 64, "eval_every": 500},
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28)},
    },
    "nice-mnist": {
        # Dinh et al. (2015): 4 additive couplings of 5 hidden layers of 1000 units, logistic prior.
        "model": "nice",
        "options": {"couplings": 4, "hidden": 1000, "layers": 5, "prior": "logistic"},
        "train": {"lr": 1e-3, "batch_size": 200, "optimizer": "adam", "eval_every": 1000},
        "data": {"name": "MNIST", "shape": (1, 28, 28)},
    },
}

DEVICES = ("auto", "cpu", "cuda")

# --------------------------------------------------------------------------------------------------
# Validators of numeric options (argparse ``type=``): argparse prints "argument --hidden: must be ...".


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer of 1 or more."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of 0 or more."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text}")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in ``low..high``."""

    def check(text: str) -> int:
        value = _number(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}, got {text}")
        return value

    check.__name__ = f"int_{low}_to_{high}"
    return check


# Model options on the command line: flag -> (option name, type, help).
_MODEL_FLAGS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "--scales": ("scales", positive_int, "glow/realnvp: number of scales (levels)"),
    "--depth": ("depth", positive_int, "glow: flow steps per scale"),
    "--hidden": ("hidden", positive_int, "conditioner width (channels or units)"),
    "--blocks": ("blocks", positive_int, "realnvp: residual blocks per conditioner"),
    "--couplings": ("couplings", positive_int, "nice/flow: number of couplings"),
    "--layers": ("layers", positive_int, "nice: hidden layers per conditioner"),
    "--coupling": ("coupling", str, "glow: affine or additive"),
    "--n-bits": ("n_bits", int_between(1, 8), "glow: bits per channel the images are reduced to (1..8)"),
}
_MODEL_CHOICES = {"coupling": ("affine", "additive")}
_TRAIN_FLAGS = ("steps", "epochs", "batch_size", "lr", "optimizer", "warmup", "grad_clip", "ema", "seed",
                "eval_every", "checkpoint_every", "keep", "log_every", "max_minutes", "precision", "temperature",
                "num_samples", "device")

# --------------------------------------------------------------------------------------------------
# Checks at the start of a command, and the one-line report of an OSError.


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _warn(message: str) -> None:
    if _rank() == 0:
        print(f"fastflow: warning: {message}", file=sys.stderr)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape)


def _check_device(device: str | None) -> str:
    """The device asked for ('auto', 'cpu' or 'cuda'), refused at once when it is 'cuda' and there is no GPU."""
    device = device or "auto"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ValueError(f"--device cuda: this machine has no CUDA GPU ({why}); use --device cpu or auto")
    return device


def _check_out_folder(out: str, flag: str = "--out") -> None:
    """Refuse a run folder that is a file, lies under a file, cannot be written, or holds a checkpoint.pt (or
    metrics.jsonl) that is not a file: before any data is loaded or model built."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out} is a file, not a folder: give a run folder")
    if os.path.isdir(out):
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {out}: the folder is not writable (permission denied)")
        for name in ("checkpoint.pt", "metrics.jsonl"):
            inside = os.path.join(out, name)
            if os.path.exists(inside) and not os.path.isfile(inside):
                raise ValueError(f"{flag} {out}: {inside} is a folder, not a file; move it away or give another "
                                 f"{flag}")
        return
    # The folder does not exist yet: its nearest existing parent must be a writable folder.
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot create it in {parent} (permission denied)")


def _check_out_file(path: str, flag: str = "--out") -> None:
    """Refuse an image file name that is a folder, has no image extension, or whose folder is missing or not
    writable."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder: give a file name such as {os.path.join(path, 'samples.png')}")
    from PIL import Image

    Image.init()
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        raise ValueError(f"{flag} {path}: give an image file name ending in .png (or .jpg, ...)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"{flag} {path}: its folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path}: cannot write there (permission denied)")


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@contextlib.contextmanager
def _doing(verb: str, path: str | None = None) -> Iterator[None]:
    """Label an OSError raised inside with what the command was doing (``read``, ``write``) and where."""
    try:
        yield
    except OSError as error:
        if not hasattr(error, "fastflow_action"):
            error.fastflow_action = (verb, path)
        raise


def _describe_os_error(error: OSError) -> str:
    """``cannot write /x/y: permission denied`` rather than ``[Errno 13] Permission denied: '/x/y'``."""
    from fastflow.train.lock import RunLockedError

    if isinstance(error, RunLockedError) or error.errno is None:
        return str(error)  # a message of ours (or of the lock), written for people already
    verb, where = getattr(error, "fastflow_action", (None, None))
    if error.errno in _WRITE_ERRORS:
        verb = "write"
    reason = _REASONS.get(error.errno) or (error.strerror or str(error)).lower()
    if error.filename is not None and error.filename2 is not None:
        return f"cannot move {os.fsdecode(error.filename)} to {os.fsdecode(error.filename2)}: {reason}"
    path = os.fsdecode(error.filename) if error.filename is not None else where
    if path:
        return f"cannot {verb or 'access'} {path}: {reason}"
    return f"cannot {verb}: {reason}" if verb else reason


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
    if args.no_lu:
        options["lu"] = False
        explicit.add("lu")
    if args.memory_efficient:
        options["memory_efficient"] = True
        explicit.add("memory_efficient")
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
    _check_device(settings.get("device"))
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
            with _doing("read", out):
                found = resume_options(out, args.model, options, explicit)
            if found is not None:
                name, options = found

    if args.out is not None:
        _check_out_folder(args.out)
        resumed(args.out)
    _check_model_options(name, options)

    with _doing("read"):
        data = fastflow.data.load(args.data)
    if not isinstance(data, fastflow.data.ImageData):
        raise ValueError(f"--data {args.data}: the models here are image flows; {type(data).__name__} has no model "
                         "to train yet")
    out = args.out
    if out is None:
        out = os.path.join("runs", f"{name}-{data.name}")
        _check_out_folder(out, "--out (default)")
        resumed(out)
        _check_model_options(name, options)
    if batch > len(data.train):
        raise ValueError(f"--batch-size {batch} exceeds the {len(data.train)} training images of --data {args.data}")

    torch.manual_seed(settings.get("seed", 0))
    model = build_model(name, data.shape, data.levels, **options)
    parameters = sum(p.numel() for p in model.parameters())
    made_for = preset.get("data")
    if made_for and tuple(made_for["shape"]) != tuple(data.shape):
        _warn(f"preset {args.preset} was made for {made_for['name']} {_shape_text(made_for['shape'])}; "
              f"--data {args.data} is {_shape_text(data.shape)} (the model has {parameters:,} parameters)")
    spec = {"name": name, "options": options, "vector": MODELS[name].vector}
    tensorboard = None if args.tensorboard is None else (args.tensorboard or os.path.join(out, "tensorboard"))
    config = TrainConfig(out=out, resume=args.resume, overwrite=args.overwrite, model_spec=spec, data_spec=args.data,
                         tensorboard=tensorboard, **settings)
    if _rank() == 0:
        channels, height, width = data.shape
        print(f"fastflow {fastflow.__version__}: training {name} on {data.name} "
              f"({len(data.train)} train / {len(data.test)} test images, {channels}×{height}×{width}, "
              f"{parameters:,} parameters, {world} process(es), backend {fastflow.get_backend()}, "
              f"{config.precision})")
    with _doing("write", out):
        metrics = train(model, data, config, progress=not args.no_progress)
    if _rank() == 0:
        print(f"done: test {metrics.get('test_bpd', float('nan')):.3f} bits/dim after {metrics['step']} steps; "
              f"samples in {os.path.join(out, 'samples.png')}, metrics in {os.path.join(out, 'metrics.jsonl')}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from fastflow.train import save_grid
    from fastflow.train.run import load_run

    device = _check_device(args.device)
    _check_out_file(args.out)
    with _doing("read", args.run):
        run = load_run(args.run, device=device)
    samples = run.sample(args.n, temperature=args.temperature, seed=args.seed)
    with _doing("write", args.out):
        save_grid(samples, args.out, scale=args.scale)
    print(f"{args.n} samples of {run.name} (step {run.step}, temperature {args.temperature:g}, seed {args.seed}) "
          f"in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import fastflow
    from fastflow.train.loop import evaluate
    from fastflow.train.run import load_run

    device = _check_device(args.device)
    with _doing("read", args.run):
        run = load_run(args.run, device=device)
    spec = args.data or run.data_spec
    with _doing("read"):
        data = fastflow.data.load(spec)
    if not isinstance(data, fastflow.data.ImageData):
        raise ValueError(f"--data {spec}: {type(data).__name__} is not image data")
    if tuple(data.shape) != run.data_shape:
        raise ValueError(f"--data {spec} is {_shape_text(data.shape)}, but the run {run.path} was trained on "
                         f"{_shape_text(run.data_shape)} images")
    images = data.test if args.split == "test" else data.train
    bpd = evaluate(run.model, images, vector=run.vector, batch_size=args.batch_size)
    print(f"{run.name} (step {run.step}) on {data.name} {args.split}: {bpd:.4f} bits/dim over {len(images)} images")
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


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settings_text(settings: dict) -> str:
    return " ".join(f"{key.replace('_', '-')}={_value_text(value)}" for key, value in settings.items())


def format_presets() -> str:
    """A table of :data:`PRESETS`: per preset its model, the data set it was made for, the model options and the
    training settings it sets (as flag names: a flag given on the command line overrides the preset)."""
    columns = [("preset", 15), ("model", 7), ("made for", 21), ("model options", 28), ("training", 30)]
    lines = ["  ".join(title.ljust(width) for title, width in columns).rstrip(),
             "  ".join("-" * width for _, width in columns)]
    for name in sorted(PRESETS):
        preset = PRESETS[name]
        data = preset.get("data", {})
        made_for = f"{data.get('name', '?')} {_shape_text(data.get('shape', ()))}"
        cells = [name, preset["model"], made_for, _settings_text(preset.get("options", {})),
                 _settings_text(preset.get("train", {}))]
        wrapped = [textwrap.wrap(cell, width, break_on_hyphens=False) or [""]
                   for cell, (_, width) in zip(cells, columns, strict=True)]
        for row in range(max(len(cell) for cell in wrapped)):
            parts = [(cell[row] if row < len(cell) else "").ljust(width)
                     for cell, (_, width) in zip(wrapped, columns, strict=True)]
            lines.append("  ".join(parts).rstrip())
    lines.append("")
    lines += textwrap.wrap("Options a preset does not set take the model's and the trainer's defaults; flags given "
                           "with --preset override the preset's values, e.g. fastflow train --preset glow-fashion "
                           "--hidden 64.", 100)
    return "\n".join(lines)


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
fastflow trains normalizing flows (Glow, RealNVP, NICE and a small coupling flow) on image data, in one process or
in several under torchrun, and reports bits/dim, sample grids, loss curves and checkpoints. It also draws samples
from a trained run, evaluates one on a data split, runs the kernel benchmarks and shows which kernel backends this
machine has."""

_EPILOG = """\
examples:
  fastflow train glow                          a small Glow on the built-in digits
  fastflow train glow --data fashion-mnist --out runs/glow-fmnist
  fastflow train --preset glow-cifar10 --data npz:cifar10.npz --out runs/glow --precision bf16
  torchrun --nproc_per_node=8 -m fastflow train --preset glow-cifar10 --data npz:cifar10.npz --out runs/glow --resume
  fastflow sample runs/glow --n 64 --temperature 0.7 --out samples.png
  fastflow eval runs/glow                      test bits/dim with the averaged weights
  fastflow presets                             what each preset sets
  fastflow info                                the kernel backends, models and presets

Run fastflow COMMAND --help for the options of a command."""

_TRAIN_EPILOG = """\
examples:
  fastflow train glow --steps 200 --hidden 16 --depth 2
  fastflow train --preset glow-fashion --data fashion-mnist --out runs/glow-fmnist
  fastflow train --preset glow-fashion --data fashion-mnist --out runs/glow-fmnist --resume

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
    train.add_argument("--data", default="digits",
                       help="digits (built in), fashion-mnist, idx:DIR, npz:PATH, folder:DIR (default digits)")
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
    train.add_argument("--grad-clip", type=positive_float, help="gradient-norm clipping (default 100)")
    train.add_argument("--ema", type=probability,
                       help="Polyak averaging decay in (0, 1) for evaluation and samples (default 0.999)")
    train.add_argument("--seed", type=non_negative_int, help="seed of the data order, noise and weights (default 0)")
    train.add_argument("--precision", choices=("fp32", "bf16"),
                       help="fp32 (default), or bf16: autocast with float32 master weights")
    train.add_argument("--device", choices=DEVICES, help="auto (default: cuda if there is a GPU), cpu or cuda")
    train.add_argument("--eval-every", type=positive_int,
                       help="steps between evaluations and sample grids (default 250)")
    train.add_argument("--checkpoint-every", type=positive_int,
                       help="steps between checkpoints (default: --eval-every)")
    train.add_argument("--keep", type=positive_int, help="checkpoints kept (default 3)")
    train.add_argument("--log-every", type=positive_int, help="steps between lines of metrics.jsonl (default 10)")
    train.add_argument("--max-minutes", type=positive_float, help="stop when this wall-clock budget is spent")
    train.add_argument("--temperature", type=non_negative_float,
                       help="sampling temperature of the grids (default 0.7)")
    train.add_argument("--num-samples", type=positive_int, help="images per sample grid (default 64)")
    for flag, (name, kind, text) in _MODEL_FLAGS.items():
        extra = ("--levels",) if flag == "--scales" else ()
        choices = _MODEL_CHOICES.get(name)
        train.add_argument(flag, *extra, dest=name, type=kind, choices=choices, help=text)
    train.add_argument("--no-lu", action="store_true", help="glow: plain 1×1 convolution weights")
    train.add_argument("--memory-efficient", action="store_true", help="rebuild activations in the backward")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    sample = commands.add_parser(
        "sample", help="a PNG grid of samples from a trained run",
        description="Draw samples from a trained run (with its averaged weights) and save them as one PNG grid.")
    sample.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    sample.add_argument("--n", type=positive_int, default=64, help="number of samples (default 64)")
    sample.add_argument("--temperature", type=non_negative_float, default=0.7,
                        help="sampling temperature, 0 for the mode (default 0.7)")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    sample.add_argument("--scale", type=positive_int, default=4, help="pixels per image pixel in the PNG (default 4)")
    sample.add_argument("--out", default="samples.png", help="the PNG file written (default samples.png)")
    sample.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default: cuda if there is a GPU), cpu or cuda")
    sample.set_defaults(handler=_sample)

    evaluation = commands.add_parser(
        "eval", help="bits/dim of a trained run on a data split",
        description="Bits/dim of a trained run (with its averaged weights) on the test or train split.")
    evaluation.add_argument("run", help="run folder (its checkpoint.pt) or a checkpoint file")
    evaluation.add_argument("--data", help="data spec (default: the run's)")
    evaluation.add_argument("--split", choices=("test", "train"), default="test", help="the split (default test)")
    evaluation.add_argument("--batch-size", type=positive_int, default=500, help="images per batch (default 500)")
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
        print(f"fastflow: error: {_describe_os_error(error)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FloatingPointError) as error:
        print(f"fastflow: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
