"""PNG grids of images (PIL), for samples during and after training."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

__all__ = ["save_grid"]


def save_grid(images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 1,
              padding: int = 1) -> None:
    """Write ``images [N, C, H, W]`` in ``[0, 1]`` (``C`` = 1 or 3) as one PNG grid, each pixel ``scale``×."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(array[..., 0] if c == 1 else array).save(path)
