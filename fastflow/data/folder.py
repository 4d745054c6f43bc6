"""Image data sets stored as a folder of image files (PNG, JPEG, BMP, GIF, WebP), read with PIL: spec ``folder:DIR``.

Layouts, tried in this order:

- ``DIR/train/...`` and ``DIR/test/...``: the two splits as given;
- any other ``DIR``: every image below it, in sorted path order, with the last 10% (at least one image) as test;
  with class subfolders, the last 10% of each class, so that the test set is not all one class.

When every image lies in a class subfolder (``DIR/train/<class>/...``, or ``DIR/<class>/...`` without the split
folders), its label is the index of its class in the sorted class names; otherwise there are no labels. Images are
read as grey (``L``, one channel) when every one of them is grey, else as ``RGB``; all must share one size.
A relative ``DIR`` is taken from the current directory, else from ``$FASTFLOW_DATA``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastflow.data.paths import resolve_data_path
from fastflow.data.registry import ImageData, register_loader

__all__ = ["EXTENSIONS", "TEST_PERCENT", "load_folder"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEST_PERCENT = 10
LEVELS = 256
_SPLITS = ("train", "test")


def _images_below(root: Path) -> list[Path]:
    """Every image file below ``root`` (recursively, any case of extension), in sorted path order.

    Hidden files and folders are left out: archives made on macOS carry ``._name.png`` metadata files that PIL
    cannot read.
    """
    return sorted(
        path for path in root.rglob("*")
        if path.suffix.lower() in EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _class_of(path: Path, root: Path) -> str | None:
    """The class subfolder of ``path`` below ``root``, or ``None`` for an image directly in ``root``."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _split_last(groups: list[str | None]) -> tuple[list[int], list[int]]:
    """Indices of the train and test images, given one class name (or ``None``) per image in ``groups``.

    The last ``TEST_PERCENT`` % of each class (at least one image) goes to test, the rest to train: per class
    rather than overall, because sorted paths run class by class and the overall tail would be a single class.
    A class of one image stays in train; if that leaves no test image, the last image overall is taken.
    """
    members: dict[str | None, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    test: set[int] = set()
    for indices in members.values():
        if len(indices) > 1:
            test.update(indices[-max(1, len(indices) * TEST_PERCENT // 100):])
    if not test:
        test.add(len(groups) - 1)
    return [i for i in range(len(groups)) if i not in test], sorted(test)


def _read(paths: list[Path]) -> tuple[np.ndarray, bool]:
    """The images ``paths`` as uint8 RGB ``[N, H, W, 3]``, and whether every one of them is grey."""
    arrays = []
    size = first = None
    grey = True
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path}: not a readable image ({error})") from error
        if size is None:
            size, first = rgb.shape[:2], path
        elif rgb.shape[:2] != size:
            raise ValueError(
                f"{path}: image size {rgb.shape[1]}×{rgb.shape[0]} (width×height) differs from "
                f"{size[1]}×{size[0]} of {first}; all images of a folder data set must share one size"
            )
        # Judged by the pixels, not the mode: palette GIFs and RGB files often hold grey images.
        grey = grey and bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())
        arrays.append(rgb)
    return np.stack(arrays), grey


@register_loader("folder")
def load_folder(argument: str | None = None) -> ImageData:
    """``ImageData`` from the image folder ``argument``: uint8 ``[N, C, H, W]`` (``C`` = 1 or 3), 256 levels.

    Labels are int64 ``[N]`` class indices when the images lie in class subfolders, else ``None``.
    """
    if argument is None:
        raise ValueError("data spec 'folder' needs a folder: expected 'folder:DIR' with DIR holding image files")
    hint = f"it should hold image files ({', '.join(EXTENSIONS)}), optionally in train/ and test/"
    folder = resolve_data_path(argument, folder=True, what="image folder", hint=hint)
    split_folders = [folder / split for split in _SPLITS]
    present = [path.is_dir() for path in split_folders]
    if any(present) and not all(present):
        have, lack = (split_folders[0], split_folders[1]) if present[0] else (split_folders[1], split_folders[0])
        raise ValueError(f"{folder}: has {have.name}/ but no {lack.name}/; expected both split folders or neither")

    if all(present):
        train_paths, test_paths = (_images_below(path) for path in split_folders)
        for split_folder, paths in zip(split_folders, (train_paths, test_paths), strict=True):
            if not paths:
                raise ValueError(f"{split_folder}: no image files ({', '.join(EXTENSIONS)}) found in it")
        paths = train_paths + test_paths
        groups = [_class_of(path, split_folders[0]) for path in train_paths]
        groups += [_class_of(path, split_folders[1]) for path in test_paths]
        train_index, test_index = list(range(len(train_paths))), list(range(len(train_paths), len(paths)))
    else:
        paths = _images_below(folder)
        if len(paths) < 2:
            found = "no image files" if not paths else "only one image file"
            raise ValueError(
                f"{folder}: {found} ({', '.join(EXTENSIONS)}) found in it; a folder without train/ and test/ "
                f"needs at least 2 images to split"
            )
        groups = [_class_of(path, folder) for path in paths]
        train_index, test_index = _split_last(groups)

    images, grey = _read(paths)
    # HWC -> CHW; a grey image has three equal channels, of which one is kept.
    images = torch.from_numpy(images[..., :1] if grey else images).permute(0, 3, 1, 2)
    train, test = images[train_index].contiguous(), images[test_index].contiguous()

    train_labels = test_labels = None
    if None not in groups:
        classes = {name: index for index, name in enumerate(sorted(set(groups)))}
        labels = torch.tensor([classes[name] for name in groups], dtype=torch.int64)
        train_labels, test_labels = labels[train_index], labels[test_index]
    return ImageData(folder.resolve().name, train, test, LEVELS, train_labels, test_labels)
