"""A trained run, rebuilt from its folder or one checkpoint file: ``run = fastflow.load_run("runs/glow-digits")``.

A checkpoint names its model and the model's options (``model_spec``), the data's shape and number of levels, so
the model is rebuilt through :func:`fastflow.models.registry.build_model` and its weights loaded, then the
Polyak-averaged weights copied in (``weights="averaged"``, what evaluation and sample grids use) unless the raw
last iterate is asked for. Loading goes through :func:`fastflow.train.checkpoint.load_checkpoint`: the file is
read with ``weights_only=True`` and its checksum verified. The model runs on whichever kernel backends the
machine has, the compiled extension or not (the weights do not depend on the backend).

A text model's run (``charrnn``) has ``data_shape`` ``()`` and ``levels`` the vocabulary size; its model keeps the
characters, and ``run.sample`` gives strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.train.checkpoint import BEST, LATEST, CheckpointError, load_checkpoint, newest_intact_checkpoint

__all__ = ["CHECKPOINTS", "WEIGHTS", "Run", "checkpoint_path", "load_run", "resume_options"]

WEIGHTS = ("averaged", "raw")
CHECKPOINTS = ("best", "latest")


@dataclass
class Run:
    """A model rebuilt from a checkpoint (in eval mode), and what the checkpoint says about it."""

    model: nn.Module
    checkpoint: dict[str, Any] = field(repr=False)
    path: str
    weights: str

    @property
    def step(self) -> int:
        return int(self.checkpoint["step"])

    @property
    def name(self) -> str:
        return self.checkpoint["model_spec"]["name"]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.checkpoint["model_spec"].get("options", {}))

    @property
    def vector(self) -> bool:
        return bool(self.checkpoint["model_spec"].get("vector", False))

    @property
    def data_spec(self) -> str:
        return self.checkpoint.get("data_spec", "digits")

    @property
    def data_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of the images, or ``()`` for text."""
        return tuple(self.checkpoint["data_shape"])

    @property
    def text(self) -> bool:
        """Whether the run's model is a language model of text (its samples are strings)."""
        from fastflow.models.registry import MODELS

        spec = MODELS.get(self.name)
        return spec.data == "text" if spec is not None else not self.data_shape

    @property
    def levels(self) -> int:
        return int(self.checkpoint["levels"])

    @property
    def unit(self):
        """The unit of the run's scores (bits/dim, nats for binary data, nats/char for text): a
        ``fastflow.train.objective.Unit``."""
        from fastflow.train.objective import unit_for, unit_named

        stored = self.checkpoint.get("unit")
        return unit_named(stored) if isinstance(stored, str) else unit_for(self.levels)

    def sample(self, n: int, *, temperature: float | None = None, seed: int = 0, length: int | None = None,
               prime: str | None = None) -> Tensor | list[str]:
        """``n`` samples, the same as ``fastflow sample --seed`` gives: images ``[n, C, H, W]`` in ``[0, 1]`` (the
        global random state left as it was), or for a text run ``n`` strings, each ``prime`` (default none) then
        ``length`` (default 500) characters. ``temperature``: None is 0.7 for the flows, 1.0 (exact) for discrete
        models and text."""
        if self.text:
            from fastflow.train.text import SAMPLE_LENGTH

            generator = torch.Generator(self.device).manual_seed(seed)
            return self.model.sample_text(n, SAMPLE_LENGTH if length is None else length,
                                          1.0 if temperature is None else temperature, prime=prime,
                                          generator=generator)
        if length is not None or prime is not None:
            raise ValueError(f"length and prime are for the samples of a text model; {self.name} makes images")
        from fastflow.train.images import draw_samples

        return draw_samples(self.model, n, self.data_shape, temperature=temperature, seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def checkpoint_path(path: str | os.PathLike, checkpoint: str = "best") -> str:
    """The checkpoint file of ``path``: itself, or of a run folder ``checkpoint-best.pt`` (the state the validation
    split chose, for data that has one) with ``checkpoint="best"`` when it exists, else ``checkpoint.pt``."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.basename(os.path.normpath(path)) not in (LATEST, BEST):
        best = os.path.join(path, BEST)
        return best if checkpoint == "best" and os.path.lexists(best) else os.path.join(path, LATEST)
    return path


def _check_spec(checkpoint: dict[str, Any], file: str) -> None:
    spec = checkpoint.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"checkpoint {file!r} does not say which model it holds (written by an older fastflow "
                              "or not by `fastflow train`)")
    for key in ("data_shape", "levels", "model"):
        if key not in checkpoint:
            raise CheckpointError(f"checkpoint {file!r} has no {key!r}: it was not written by `fastflow train`")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but this machine has no CUDA device; use 'cpu'")
    return device


def load_run(path: str | os.PathLike, *, device: str | torch.device | None = "cpu",
             weights: str = "averaged", checkpoint: str = "best") -> Run:
    """Rebuild the model of a run folder or of one checkpoint file.

    A folder gives its ``checkpoint-best.pt`` (the best validation score, for data with a validation split such as
    binarized MNIST) with ``checkpoint="best"``, else (and with ``checkpoint="latest"``) ``checkpoint.pt``.

    ``weights="averaged"`` loads the Polyak average when the run kept one (what the run's evaluations and samples
    used), ``"raw"`` the last iterate. ``device``: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    Raises :class:`~fastflow.train.checkpoint.CheckpointError` (a ``ValueError``) naming the file when it is
    missing, damaged or not a ``fastflow train`` checkpoint.
    """
    from fastflow.models.registry import build_model
    from fastflow.train.ema import EMA

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    where = _resolve_device(device)
    file = checkpoint_path(path, checkpoint)
    checkpoint = load_checkpoint(file, map_location="cpu")
    _check_spec(checkpoint, file)
    spec = checkpoint["model_spec"]
    try:
        model = build_model(spec["name"], tuple(checkpoint["data_shape"]), int(checkpoint["levels"]),
                            **spec.get("options", {}))
        model.load_state_dict(checkpoint["model"])
        if weights == "averaged" and checkpoint.get("ema"):
            ema = EMA(model)
            ema.load_state_dict(checkpoint["ema"])
            ema.copy_to(model)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {file!r} does not fit the {spec['name']} model it names: "
                              f"{str(error).splitlines()[0]}") from None
    return Run(model.to(where).eval(), checkpoint, file, weights)


def resume_options(out: str | os.PathLike, name: str | None, options: dict[str, Any],
                   explicit: set[str] | frozenset[str] = frozenset()) -> tuple[str, dict[str, Any]] | None:
    """The model of the run in ``out`` for ``train --resume``: ``(name, options)`` from its newest intact
    checkpoint, or None when ``out`` has no checkpoint file at all.

    ``name`` (None: not given) and the options in ``explicit`` (those the user set on the command line) must agree
    with the checkpoint: a conflict is a ``ValueError`` naming both values. Options not given explicitly (defaults,
    a preset's) are taken from the checkpoint.
    """
    path, checkpoint, skipped = newest_intact_checkpoint(out)
    if path is None:
        if skipped:
            raise CheckpointError(_no_intact_message(out, skipped))
        return None
    _check_spec(checkpoint, path)
    spec = checkpoint["model_spec"]
    if name is not None and name != spec["name"]:
        raise ValueError(f"--resume: the run in {os.fspath(out)} trains {spec['name']!r}, not {name!r}; drop the "
                         "model argument or give another --out")
    stored = dict(spec.get("options", {}))
    conflicts = [f"--{key.replace('_', '-')} {options[key]!r} (the checkpoint has {stored.get(key)!r})"
                 for key in sorted(explicit) if key in options and stored.get(key) != options[key]]
    if conflicts:
        raise ValueError(f"--resume: {', '.join(conflicts)} conflicts with the run in {os.fspath(out)}; a resumed run "
                         "keeps its model: drop the flag, or give another --out to train a new model")
    return spec["name"], stored


def _no_intact_message(out: str | os.PathLike, skipped: list[tuple[str, str]]) -> str:
    reasons = "; ".join(why for _, why in skipped)
    return (f"--resume: no intact checkpoint in {os.fspath(out)} ({reasons}); refusing to start afresh over a run "
            "that has checkpoints: restore one, move them away, or give another --out")
