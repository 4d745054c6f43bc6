"""MNIST-format (idx) data sets, such as MNIST and Fashion-MNIST: spec ``idx:DIR``, or ``fashion-mnist``.

``DIR`` holds the four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte``, each gzip'd (``.gz``) or plain. A relative ``DIR`` is taken from the current
directory, else from ``$FASTFLOW_DATA``.

The idx format: two zero bytes, a type code (only ``0x08``, uint8, is supported), the number of dimensions ``D``,
then ``D`` big-endian int32 sizes, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from fastflow.data.paths import find_named_data, resolve_data_path
from fastflow.data.registry import ImageData, register_loader

__all__ = ["load_fashion_mnist", "load_idx", "read_idx"]

LEVELS = 256
FILES = {
    "train": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """The uint8 array in the idx file ``path`` (gzip'd or plain), shaped as its header says, e.g. ``[N, 28, 28]``."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not a readable gzip file ({error})") from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        found = raw[:4].hex(" ") or "an empty file"
        raise ValueError(f"{path}: not an idx file: expected the magic number 00 00 <type> <dims>, found {found}")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        name = _TYPE_NAMES.get(type_code, "unknown")
        raise ValueError(f"{path}: idx type code 0x{type_code:02x} ({name}) is not supported; only 0x08 (uint8) is")
    if ndim == 0:
        raise ValueError(f"{path}: idx header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: idx header of {ndim} dimensions needs {header} bytes, the file has {len(raw)}")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(size < 0 for size in shape):
        raise ValueError(f"{path}: idx header has a negative size in shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(raw) - header
    if found != expected:
        raise ValueError(f"{path}: idx shape {shape} needs {expected} bytes of data after the header, found {found}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy())


def _expected_files() -> str:
    return ", ".join(f"{name}[.gz]" for name in FILES.values())


def _find_file(folder: Path, name: str) -> Path:
    """``folder/name``, plain or gzip'd (``name.gz``)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder / name}[.gz] not found; an idx data folder holds {_expected_files()}")


def _images(path: Path) -> torch.Tensor:
    images = read_idx(path)
    if images.dim() != 3:
        raise ValueError(f"{path}: expected images [N, H, W] (an idx3 file), found shape {tuple(images.shape)}")
    return images[:, None]


def _labels(path: Path, count: int) -> torch.Tensor:
    labels = read_idx(path)
    if labels.dim() != 1 or labels.shape[0] != count:
        raise ValueError(f"{path}: expected {count} labels [N] (an idx1 file), found shape {tuple(labels.shape)}")
    return labels.long()


@register_loader("idx")
def load_idx(argument: str | None = None) -> ImageData:
    """``ImageData`` from the idx folder ``argument``: uint8 images ``[N, 1, H, W]``, 256 levels, int64 labels ``[N]``.

    For MNIST and Fashion-MNIST: train ``[60000, 1, 28, 28]``, test ``[10000, 1, 28, 28]``, labels in ``0…9``.
    """
    if argument is None:
        raise ValueError(f"data spec 'idx' needs a folder: expected 'idx:DIR' with DIR holding {_expected_files()}")
    folder = resolve_data_path(argument, folder=True, what="idx data folder",
                               hint=f"it should hold {_expected_files()}")
    paths = {key: _find_file(folder, name) for key, name in FILES.items()}
    train = _images(paths["train"])
    test = _images(paths["test"])
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"{folder}: train images {tuple(train.shape[1:])} and test images {tuple(test.shape[1:])} differ in shape"
        )
    return ImageData(
        name=folder.resolve().name,
        train=train,
        test=test,
        levels=LEVELS,
        train_labels=_labels(paths["train_labels"], train.shape[0]),
        test_labels=_labels(paths["test_labels"], test.shape[0]),
    )


@register_loader("fashion-mnist")
def load_fashion_mnist(argument: str | None = None) -> ImageData:
    """Fashion-MNIST from ``$FASTFLOW_DATA/fashion-mnist``, else ``../shared/data/fashion-mnist`` by the checkout.

    The same as ``idx:DIR``: train ``[60000, 1, 28, 28]``, test ``[10000, 1, 28, 28]`` uint8, labels ``0…9``.
    """
    if argument is not None:
        raise ValueError(f"data spec 'fashion-mnist' takes no argument, got 'fashion-mnist:{argument}'")
    folder = find_named_data("fashion-mnist", None, folder=True, what="Fashion-MNIST",
                             holds=f"fashion-mnist/ with {_expected_files()}, or use 'idx:DIR'")
    return load_idx(str(folder))
