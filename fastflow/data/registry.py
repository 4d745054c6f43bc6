"""``load(spec)``: a data set from a spec string such as ``digits`` or ``KIND:ARGUMENT``.

Image kinds return ``ImageData``; the ``text`` kind returns ``fastflow.data.text.TextData`` (characters, for
language models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:  # text.py registers itself here, so a runtime import would be circular
    from fastflow.data.text import TextData

__all__ = ["ImageData", "load", "register_loader"]


@dataclass
class ImageData:
    """Quantised images: ``train``/``test`` uint8 ``[N, C, H, W]`` with values in ``[0, levels)``.

    ``train_labels``/``test_labels``: optional int64 class labels ``[N]``, one per image, for labelled sets.
    ``valid``: an optional held-out validation split (binarized MNIST has one) that chooses the checkpoint a run
    is scored with, so that the test split stays unseen.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    levels: int
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


_LOADERS: dict[str, Callable[[str | None], ImageData | TextData]] = {}
# The decorator hands back the loader itself, so ``load_digits`` keeps its own return type (``ImageData``).
Loader = TypeVar("Loader", bound="Callable[[str | None], ImageData | TextData]")


def register_loader(kind: str) -> Callable[[Loader], Loader]:
    """Register ``fn(argument) -> ImageData`` (or ``TextData``) for specs ``kind`` or ``kind:argument``."""

    def decorator(fn: Loader) -> Loader:
        _LOADERS[kind] = fn
        return fn

    return decorator


def load(spec: str = "digits") -> ImageData | TextData:
    """The data set named by ``spec``: ``digits`` (built in), or ``KIND:ARGUMENT`` of a registered kind."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string such as 'digits', got {spec!r}")
    kind, _, argument = spec.partition(":")
    if kind not in _LOADERS:
        raise ValueError(f"data spec {spec!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[kind](argument or None)
