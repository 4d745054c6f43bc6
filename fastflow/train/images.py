"""PNG grids of images (PIL), for samples during and after training."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

__all__ = ["default_temperature", "draw_samples", "make_grid", "save_grid"]


def default_temperature(model: torch.nn.Module) -> float:
    """0.7 for the flows of dequantised images (Glow's reduced-temperature samples look cleaner), 1.0 (exact
    samples) for the discrete models such as the Bernoulli autoregressive ones."""
    from fastflow.train.objective import takes_noise

    return 0.7 if takes_noise(model) else 1.0


@torch.no_grad()
def draw_samples(model: torch.nn.Module, n: int, shape: tuple[int, ...], *, temperature: float | None = None,
                 seed: int = 0) -> torch.Tensor:
    """``n`` samples of ``model`` as images ``[n, *shape]``, drawn under the seed ``seed`` with the global random
    state left as it was. ``temperature`` goes to models whose ``sample`` takes one; ``None`` is
    :func:`default_temperature`."""
    import inspect

    if temperature is None:
        temperature = default_temperature(model)
    kwargs = {"temperature": temperature} if "temperature" in inspect.signature(model.sample).parameters else {}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        samples = model.sample(n, **kwargs)
    return samples.reshape(-1, *shape)


def make_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 1) -> torch.Tensor:
    """``images [N, C, H, W]`` in ``[0, 1]`` (``C`` = 1 or 3) tiled row by row on a white background:
    ``[C, rows·(H+padding)+padding, nrow·(W+padding)+padding]`` float32 on the CPU."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = max(1, int(math.ceil(n / nrow)))
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 1,
              padding: int = 1) -> None:
    """Write ``images [N, C, H, W]`` in ``[0, 1]`` (``C`` = 1 or 3) as one PNG grid, each pixel ``scale``×."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive int (pixels per image pixel), got {scale!r}")
    grid = make_grid(images, nrow=nrow, padding=padding)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(array[..., 0] if grid.shape[0] == 1 else array).save(path)
