"""Models by name, for the ``fastflow`` command and checkpoints: ``build_model("glow", (1, 8, 8), 17, depth=8)``.

A model joins by registration: ``@register_model("name")`` on ``build(shape, levels, **options) -> nn.Module``,
where ``shape`` is the data's ``(C, H, W)`` and ``levels`` its number of grey levels. The options a builder takes
are its keyword-only arguments; a checkpoint stores the name and the options, so that ``fastflow sample`` and
``fastflow eval`` rebuild the same model. ``vector=True`` marks models of flat vectors ``[B, C·H·W]``.

``data="text"`` marks models of character sequences (``fastflow.data.TextData``): their ``shape`` is ``()`` (a
token is a scalar), ``levels`` the vocabulary size, and ``build(shape, levels, vocab=None, **options)`` also takes
the vocabulary's characters (which the model keeps in its ``state_dict``, so a checkpoint rebuilds it without them).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from fastflow.models.charrnn import CharRNN
from fastflow.models.coupling_flow import CouplingFlow
from fastflow.models.fvsbn import FVSBN
from fastflow.models.glow import Glow
from fastflow.models.made import MADE
from fastflow.models.maf import MAF
from fastflow.models.nade import NADE
from fastflow.models.nice import NICE
from fastflow.models.pixelcnn import PixelCNN
from fastflow.models.realnvp import RealNVP

__all__ = ["DATA_KINDS", "MODELS", "ModelSpec", "build_model", "register_model"]

#: What a model is trained on, and the built-in data set ``fastflow train`` uses when ``--data`` is not given.
DATA_KINDS = {"images": "digits", "text": "pysource"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    vector: bool
    description: str
    data: str = "images"  # a key of DATA_KINDS

    @property
    def options(self) -> dict[str, object]:
        """The builder's options (its keyword-only arguments) and their defaults."""
        parameters = inspect.signature(self.build).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def default_data(self) -> str:
        """The data spec of the built-in data set of this model's kind (``digits``, ``pysource``)."""
        return DATA_KINDS[self.data]


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, vector: bool = False, data: str = "images"):
    if data not in DATA_KINDS:
        raise ValueError(f"data must be one of {', '.join(DATA_KINDS)}, got {data!r}")

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelSpec(name, build, vector, (build.__doc__ or "").strip().splitlines()[0], data)
        return build

    return decorator


def build_model(name: str, shape: tuple[int, ...], levels: int, *, vocab: list[str] | None = None,
                **options) -> nn.Module:
    """The model ``name`` for data of ``shape`` ``(C, H, W)`` with ``levels`` grey levels, or for text (``shape``
    ``()``, ``levels`` the vocabulary size, ``vocab`` its characters when known)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {name!r}")
    spec = MODELS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"model {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(spec.options)}"
        )
    shape = tuple(shape)
    if spec.data == "text":
        if shape != ():
            raise ValueError(f"{name} models text (character tokens), not images of shape {shape}: give text data "
                             f"such as --data {DATA_KINDS['text']} or text:PATH")
        return spec.build(shape, levels, vocab, **options)
    if len(shape) != 3:
        raise ValueError(f"{name} models images (C, H, W), not text: train a text model such as charrnn on it, or "
                         f"give image data such as --data {DATA_KINDS['images']}")
    return spec.build(shape, levels, **options)


def _square(shape: tuple[int, int, int], name: str) -> tuple[int, int]:
    channels, height, width = shape
    if height != width:
        raise ValueError(f"{name} needs square images, got {height}×{width}")
    return channels, height


@register_model("glow")
def _glow(shape, levels, *, scales: int = 2, depth: int = 8, hidden: int = 64, coupling: str = "affine",
          lu: bool = True, learn_top: bool = True, n_bits: int = 8, memory_efficient: bool = False) -> Glow:
    """Glow: ActNorm → LU 1×1 convolution → coupling, multi-scale with learned priors."""
    channels, size = _square(shape, "glow")
    return Glow(channels, size, levels=scales, depth=depth, hidden_channels=hidden, coupling=coupling, lu=lu,
                learn_top=learn_top, n_bits=n_bits, num_levels=None if levels == 256 else levels,
                memory_efficient=memory_efficient)


@register_model("realnvp")
def _realnvp(shape, levels, *, scales: int = 2, hidden: int = 64, blocks: int = 2,
             memory_efficient: bool = False) -> RealNVP:
    """RealNVP: checkerboard and channel affine couplings, multi-scale, residual conditioners."""
    channels, size = _square(shape, "realnvp")
    return RealNVP(channels, size, levels=scales, hidden_channels=hidden, num_blocks=blocks, num_levels=levels,
                   memory_efficient=memory_efficient)


@register_model("nice", vector=True)
def _nice(shape, levels, *, couplings: int = 4, hidden: int = 1000, layers: int = 5, prior: str = "logistic") -> NICE:
    """NICE: additive couplings on flattened images, diagonal scaling, logistic prior."""
    channels, height, width = shape
    return NICE(channels * height * width, num_couplings=couplings, hidden_size=hidden, num_hidden_layers=layers,
                prior=prior, levels=levels)


@register_model("flow")
def _flow(shape, levels, *, couplings: int = 8, hidden: int = 64) -> CouplingFlow:
    """A small multi-scale flow of affine couplings (no ActNorm, no 1×1 convolution)."""
    channels, size = _square(shape, "flow")
    return CouplingFlow(channels, size, num_couplings=couplings, hidden_channels=hidden, levels=levels)


# --------------------------------------------------------------------------------------------------
# Autoregressive models of flattened images: FVSBN, NADE and MADE are Bernoulli models (binary data only).


def _binary(name: str, levels: int) -> None:
    if levels != 2:
        raise ValueError(
            f"{name} models binary data (levels=2, e.g. binarized MNIST), got data with {levels} levels; "
            "use a binary data set"
        )


def _hidden_sizes(hidden: object, layers: int | None) -> tuple[int, ...]:
    """``hidden``: one width (repeated ``layers`` times, once by default) or widths as a comma list ("500,500")
    or a sequence (whose length ``layers``, when given, must match)."""
    if isinstance(hidden, str):
        parts = [part.strip() for part in hidden.split(",")]
        if not all(part.isdigit() and int(part) > 0 for part in parts):
            raise ValueError(f"hidden must be a positive int or a comma list of them (e.g. 500,500), got {hidden!r}")
        hidden = tuple(int(part) for part in parts)
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 1):
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        return (int(hidden),) * (1 if layers is None else int(layers))
    if isinstance(hidden, Sequence):
        if layers is not None and len(hidden) != layers:
            raise ValueError(f"hidden gives {len(hidden)} widths {tuple(hidden)} but layers={layers}")
        return tuple(hidden)
    raise TypeError(f"hidden must be a positive int or a comma list of them, got {type(hidden).__name__} {hidden!r}")


@register_model("fvsbn", vector=True)
def _fvsbn(shape, levels) -> FVSBN:
    """FVSBN: a fully visible sigmoid belief network (logistic regressions in a chain) on binary vectors."""
    _binary("fvsbn", levels)
    channels, height, width = shape
    return FVSBN(channels * height * width)


@register_model("nade", vector=True)
def _nade(shape, levels, *, hidden: int = 500) -> NADE:
    """NADE: weight-tied autoregressive logistic regressions on binary vectors."""
    _binary("nade", levels)
    channels, height, width = shape
    return NADE(channels * height * width, hidden_size=hidden)


@register_model("made", vector=True)
def _made(shape, levels, *, hidden: int | str = 500, layers: int | None = None, masks: int = 1,
          natural_ordering: bool = False, direct: bool = False, seed: int = 0) -> MADE:
    """MADE: a masked autoencoder on binary vectors (hidden: width or comma list; layers: hidden layers)."""
    _binary("made", levels)
    channels, height, width = shape
    return MADE(channels * height * width, _hidden_sizes(hidden, layers), num_masks=masks,
                natural_ordering=natural_ordering, direct=direct, seed=seed)


@register_model("maf", vector=True)
def _maf(shape, levels, *, layers: int = 5, hidden: int | str = 512) -> MAF:
    """MAF: masked autoregressive flow layers (Gaussian MADEs, order reversed between them), dequantised data."""
    channels, height, width = shape
    return MAF(channels * height * width, num_layers=layers, hidden_sizes=_hidden_sizes(hidden, None), levels=levels)


# --------------------------------------------------------------------------------------------------
# Autoregressive models of whole images.


@register_model("pixelcnn")
def _pixelcnn(shape, levels, *, hidden: int = 64, layers: int = 6, gated: bool = False, kernel: int = 7,
              residual_kernel: int = 3) -> PixelCNN:
    """PixelCNN (gated: Gated PixelCNN): masked convolutions, a softmax over the levels (Bernoulli for 2)."""
    channels, height, width = shape
    return PixelCNN(channels, levels=levels, hidden_channels=hidden, num_layers=layers, gated=gated,
                    image_size=(height, width), kernel_size=kernel, residual_kernel_size=residual_kernel)


# --------------------------------------------------------------------------------------------------
# Language models of text.


@register_model("charrnn", data="text")
def _charrnn(shape, levels, vocab=None, *, hidden: int = 512, layers: int = 2, cell: str = "lstm",
             dropout: float = 0.0, embedding: int | None = None) -> CharRNN:
    """CharRNN: a character-level LSTM (or tanh RNN) language model, softmax over the vocabulary."""
    return CharRNN(levels, hidden, layers, cell=cell, dropout=dropout, embedding_size=embedding, vocab=vocab)
