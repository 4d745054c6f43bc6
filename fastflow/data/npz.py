"""Image data sets stored as a NumPy ``.npz`` archive: spec ``npz:PATH``.

The archive holds a train and a test array under one of the key pairs ``train``/``test``, ``x_train``/``x_test`` or
``train_data``/``test_data`` (the binarized-MNIST layout), optionally a validation array under ``valid``,
``x_valid`` or ``valid_data``, and optionally labels under ``y_train``/``y_test`` or
``train_labels``/``test_labels``. A relative ``PATH`` is taken from the current directory, else from
``$FASTFLOW_DATA``.

Image arrays may be ``[N, H, W]`` (one channel), ``[N, C, H, W]``, ``[N, H, W, C]`` with ``C`` in {1, 3}, or flat
``[N, D]`` with ``D`` a perfect square (``[N, 1, √D, √D]``). Integer arrays must lie in ``0…255``: 2 levels when
their maximum is at most 1, else 256. Float arrays must lie in ``[0, 1]`` and are quantised to 256 levels.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from fastflow.data.paths import find_named_data, resolve_data_path
from fastflow.data.registry import ImageData, register_loader

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "VALID_KEYS", "load_binarized_mnist", "load_npz"]

IMAGE_KEYS = (("train", "test"), ("x_train", "x_test"), ("train_data", "test_data"))
VALID_KEYS = ("valid", "x_valid", "valid_data")
LABEL_KEYS = (("y_train", "y_test"), ("train_labels", "test_labels"))
CHANNELS = (1, 3)


def _accepted(pairs: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{train}/{test}" for train, test in pairs)


def _open(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The keys of the archive ``path``, and the arrays among them that this loader reads (images, labels)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected a .npz archive of named arrays, found a single .npy array")
    wanted = {key for pair in IMAGE_KEYS + LABEL_KEYS for key in pair} | set(VALID_KEYS)
    with archive:
        try:
            return list(archive.files), {key: archive[key] for key in archive.files if key in wanted}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: an array in the .npz archive is unreadable ({error})") from error


def _as_nchw(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as ``[N, C, H, W]``, from any of the accepted layouts."""
    if array.ndim == 2:
        side = math.isqrt(array.shape[1])
        if side * side != array.shape[1] or side == 0:
            raise ValueError(
                f"{where}: flat images [N, D] need D a perfect square (D = side²), found shape {array.shape}"
            )
        return array.reshape(array.shape[0], 1, side, side)
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        # [N, H, W, C] is told apart by its last dimension; [N, 3, H, 3] counts as channels-first.
        if array.shape[3] in CHANNELS and array.shape[1] not in CHANNELS:
            return array.transpose(0, 3, 1, 2)
        if array.shape[1] in CHANNELS:
            return array
        raise ValueError(
            f"{where}: expected [N, C, H, W] or [N, H, W, C] with C in {{1, 3}}, found shape {array.shape}"
        )
    raise ValueError(
        f"{where}: expected images [N, H, W], [N, C, H, W], [N, H, W, C] or flat [N, D], found shape {array.shape}"
    )


def _quantise(array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """``array`` as uint8 levels; also whether it came from floats (which always have 256 levels)."""
    if array.size == 0:
        raise ValueError(f"{where}: expected at least one image, found shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        values = array[finite]
        low, high = (float(values.min()), float(values.max())) if values.size else (math.nan, math.nan)
        if not finite.all() or low < 0 or high > 1:
            found = f"values in [{low:g}, {high:g}]" if values.size else "no finite values"
            found += "" if finite.all() else f" and {int((~finite).sum())} non-finite values"
            raise ValueError(f"{where}: float images must lie in [0, 1], found {found}")
        # floor(256 x), clipped, inverts both x = k / 255 (ToTensor) and dequantised x = (k + u) / 256.
        return np.minimum(np.floor(array * 256), 255).astype(np.uint8), True
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{where}: integer images must lie in 0…255, found values in [{low}, {high}]")
        return array.astype(np.uint8), False
    raise ValueError(f"{where}: expected uint8 or float images, found dtype {array.dtype}")


def _labels(arrays: dict[str, np.ndarray], key: str | None, count: int, path: Path) -> torch.Tensor | None:
    """The int64 labels ``[count]`` under ``key``, or ``None`` when the archive has none there."""
    if key is None or key not in arrays:
        return None
    labels = arrays[key]
    where = f"{path}[{key!r}]"
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"{where}: expected {count} labels [N], found shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: expected integer labels, found dtype {labels.dtype}")
    return torch.from_numpy(labels.astype(np.int64))


@register_loader("npz")
def load_npz(argument: str | None = None) -> ImageData:
    """``ImageData`` from the ``.npz`` archive ``argument``: uint8 images ``[N, C, H, W]``, int64 labels ``[N]``.

    Each split's labels are ``None`` when the archive has none for it (binarized MNIST labels only its test set).
    For binarized MNIST: train ``[50000, 1, 28, 28]``, test ``[10000, 1, 28, 28]``, 2 levels.
    """
    if argument is None:
        raise ValueError(f"data spec 'npz' needs a file: expected 'npz:PATH' with arrays {_accepted(IMAGE_KEYS)}")
    path = resolve_data_path(argument, folder=False, what="npz file",
                             hint=f"it should hold the arrays {_accepted(IMAGE_KEYS)}")
    keys, arrays = _open(path)
    pair = next(((train, test) for train, test in IMAGE_KEYS if train in arrays and test in arrays), None)
    if pair is None:
        raise ValueError(
            f"{path}: no train/test image arrays; found keys {', '.join(sorted(keys)) or 'none'}, "
            f"expected one of the pairs {_accepted(IMAGE_KEYS)}"
        )
    valid_key = next((key for key in VALID_KEYS if key in arrays), None)
    splits = {}
    from_floats = False
    for key in (*pair, *([valid_key] if valid_key else [])):
        where = f"{path}[{key!r}]"
        images, floats = _quantise(_as_nchw(arrays[key], where), where)
        splits[key] = torch.from_numpy(np.ascontiguousarray(images))
        from_floats |= floats
    train, test = (splits[key] for key in pair)
    valid = splits.get(valid_key)
    for key in (pair[1], valid_key):
        if key is not None and splits[key].shape[1:] != train.shape[1:]:
            raise ValueError(
                f"{path}: train images {pair[0]!r} {tuple(train.shape[1:])} and {key!r} images "
                f"{tuple(splits[key].shape[1:])} differ in shape"
            )
    binary = not from_floats and all(int(split.max()) <= 1 for split in splits.values() if split.numel())
    label_pair = next(((a, b) for a, b in LABEL_KEYS if a in arrays or b in arrays), (None, None))
    return ImageData(
        name=path.stem,
        train=train,
        test=test,
        levels=2 if binary else 256,
        train_labels=_labels(arrays, label_pair[0], train.shape[0], path),
        test_labels=_labels(arrays, label_pair[1], test.shape[0], path),
        valid=valid,
    )


@register_loader("binarized-mnist")
def load_binarized_mnist(argument: str | None = None) -> ImageData:
    """Binarized MNIST (Larochelle & Murray's fixed binarisation, the NADE/MADE/PixelCNN split): train 50,000,
    validation 10,000, test 10,000 images ``[N, 1, 28, 28]``, 2 levels. Spec ``binarized-mnist`` finds
    ``$FASTFLOW_DATA/binarized_mnist/binarized_mnist.npz`` (else ``../shared/data/...`` beside the checkout);
    ``binarized-mnist:PATH`` reads that archive."""
    if argument is not None:
        return load_npz(argument)
    path = find_named_data("binarized_mnist", "binarized_mnist.npz", folder=False, what="binarized MNIST",
                           holds="binarized_mnist/binarized_mnist.npz (arrays train_data, valid_data, test_data), "
                                 "or use 'binarized-mnist:PATH'")
    data = load_npz(str(path))
    data.name = "binarized-mnist"
    return data
