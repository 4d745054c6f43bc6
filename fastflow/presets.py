"""Presets: the configurations of the papers (and of the README's runs) by name, for ``fastflow train --preset``,
and the table ``fastflow presets`` prints."""

from __future__ import annotations

import textwrap

from fastflow._arguments import shape_text

__all__ = ["PRESETS", "format_presets"]


#: Configurations of the papers (and of this README's runs): model, model options, training options, and the data
#: set the preset was made for (its name and shape ``(C, H, W)``, and the data spec ``--data`` defaults to when the
#: data set ships with fastflow or the shared data folder). Flags given on the command line override them.
PRESETS: dict[str, dict] = {
    "glow-digits": {
        "model": "glow",
        "options": {"scales": 2, "depth": 8, "hidden": 64},
        "train": {"lr": 2e-3},
        "data": {"name": "digits", "shape": (1, 8, 8), "spec": "digits"},
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
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28), "spec": "fashion-mnist"},
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
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28), "spec": "fashion-mnist"},
    },
    "nice-mnist": {
        # Dinh et al. (2015): 4 additive couplings of 5 hidden layers of 1000 units, logistic prior.
        "model": "nice",
        "options": {"couplings": 4, "hidden": 1000, "layers": 5, "prior": "logistic"},
        "train": {"lr": 1e-3, "batch_size": 200, "optimizer": "adam", "eval_every": 1000},
        "data": {"name": "MNIST", "shape": (1, 28, 28)},
    },
    # The autoregressive models on binarized MNIST (Larochelle & Murray's split; the validation split picks the
    # checkpoint that eval scores), as measured on this README's 2-core CPU.
    "fvsbn-mnist": {
        # Frey (1998), the FVSBN of Larochelle & Murray (2011, 97.45 nats): 784 chained logistic regressions.
        "model": "fvsbn",
        "options": {},
        "train": {"lr": 5e-3, "batch_size": 100, "warmup": 10, "epochs": 20.0, "eval_every": 1000},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "nade-mnist": {
        # Larochelle & Murray (2011): 500 hidden units (88.33 nats in Uria et al.'s table), on the fused nade op.
        "model": "nade",
        "options": {"hidden": 500},
        "train": {"lr": 1e-3, "batch_size": 100, "warmup": 10, "epochs": 40.0, "eval_every": 2500,
                  "max_minutes": 38.0},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "pixelcnn-mnist": {
        # The README's CPU run: PixelCNN (van den Oord et al. 2016) with 6 residual blocks of 64 channels, 57
        # minutes on one thread.
        "model": "pixelcnn",
        "options": {"hidden": 64, "layers": 6},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 1000.0, "eval_every": 2000, "max_minutes": 57.0},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "pixelcnn-fashion": {
        # The README's CPU run beside RealNVP and Glow: the same network, 256-way softmaxes, 28 minutes.
        "model": "pixelcnn",
        "options": {"hidden": 64, "layers": 6},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 1000.0, "eval_every": 500, "max_minutes": 28.0},
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28), "spec": "fashion-mnist"},
    },
    "pixelcnn-mnist-paper": {
        # For a GPU: the paper's MNIST PixelCNN size, 7×7 mask A then 15 residual blocks of 128 channels (81.30 nats
        # there, Table 4 of van den Oord et al. 2016a), Adam, batch 64, early stopping on the validation split.
        "model": "pixelcnn",
        "options": {"hidden": 128, "layers": 15},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 100.0, "eval_every": 5000},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "gated-pixelcnn-fashion": {
        # For a GPU: Gated PixelCNN (van den Oord et al. 2016b) with 15 gated layers of 128 channels on 8-bit
        # Fashion-MNIST.
        "model": "pixelcnn",
        "options": {"hidden": 128, "layers": 15, "gated": True},
        "train": {"lr": 1e-3, "batch_size": 64, "epochs": 100.0, "eval_every": 5000},
        "data": {"name": "Fashion-MNIST", "shape": (1, 28, 28), "spec": "fashion-mnist"},
    },
    "gated-pixelcnn-mnist": {
        # An hour on a 2-core Xeon with AMX (87.43 test nats, the README's table): Gated PixelCNN, 7 gated layers
        # of 32 channels per stack, bf16 autocast (AMX makes the convolutions 2.5x faster than float32 here),
        # the cosine schedule reaching 0 near the 56-minute budget, one evaluation at the end.
        "model": "pixelcnn",
        "options": {"hidden": 32, "layers": 6, "gated": True},
        "train": {"lr": 1.5e-3, "batch_size": 64, "lr_decay": "cosine", "steps": 5600, "precision": "bf16",
                  "eval_every": 100000, "checkpoint_every": 1000, "max_minutes": 56.0},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "made-mnist": {
        # Germain et al. (2015), 1 hidden layer of 500, 1 mask (88.40 nats there); natural order with direct
        # connections measured best here.
        "model": "made",
        "options": {"hidden": 500, "masks": 1, "natural_ordering": True, "direct": True},
        "train": {"lr": 1e-3, "batch_size": 100, "warmup": 10, "epochs": 30.0, "eval_every": 1000},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    "made8000-mnist": {
        # The width of the paper's binarized-MNIST runs (mgermain/MADE's command: hidden layers of 8000; its
        # one-mask, one-layer result is 88.40 nats). It overfits after about 8 epochs at this learning rate: the
        # validation split picks the checkpoint.
        "model": "made",
        "options": {"hidden": 8000, "masks": 1, "natural_ordering": True, "direct": True},
        "train": {"lr": 1e-3, "batch_size": 100, "warmup": 10, "epochs": 12.0, "eval_every": 500},
        "data": {"name": "binarized MNIST", "shape": (1, 28, 28), "spec": "binarized-mnist"},
    },
    # The sequence models: a character-level language model on text.
    "charrnn-shakespeare": {
        # Karpathy's char-rnn on tiny-shakespeare: a 2-layer LSTM of 512 units, Adam at 2e-3, gradients clipped at
        # 5, truncated back-propagation through segments of 100 characters of 32 streams, dropout 0.2 (3.3M
        # parameters overfit 1M characters within that many passes). Sized for 30 minutes on one core of this
        # README's Xeon: bf16 autocast (AMX; torch's oneDNN LSTM, ~6,000 characters/s on one thread against
        # ~4,000 in float32) makes 3,300 steps about 11 passes over the 948k training characters, the cosine
        # schedule reaching 0 at the last one. Validation scores every 500 steps (~8 s each) choose
        # checkpoint-best.pt.
        "model": "charrnn",
        "options": {"hidden": 512, "layers": 2, "cell": "lstm", "dropout": 0.2},
        "train": {"lr": 2e-3, "batch_size": 32, "seq_len": 100, "grad_clip": 5.0, "warmup": 100,
                  "lr_decay": "cosine", "steps": 3300, "eval_every": 500, "num_samples": 4, "precision": "bf16",
                  "max_minutes": 30.0},
        "data": {"name": "tiny-shakespeare", "shape": (), "spec": "tinyshakespeare"},
    },
}


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
    # The name and model columns as wide as their longest entry (a name wrapped at a hyphen reads as two presets).
    columns = [("preset", max(map(len, PRESETS))), ("model", max(len(p["model"]) for p in PRESETS.values())),
               ("made for", 24), ("model options", 28), ("training", 30)]
    lines = ["  ".join(title.ljust(width) for title, width in columns).rstrip(),
             "  ".join("-" * width for _, width in columns)]
    for name in sorted(PRESETS):
        preset = PRESETS[name]
        data = preset.get("data", {})
        shape = data.get("shape", ())
        made_for = f"{data.get('name', '?')} {shape_text(shape) if shape else 'text'}"
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
