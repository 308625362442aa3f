"""Image grids for samples, written with matplotlib (no torchvision).

Images come in the model's range [−1, 1] with shape (N, C, H, W), C = 1 (grey) or 3 (RGB).
`image_grid` tiles them into one array; `save_image_grid` writes it to a PNG atomically
(temporary name, then `os.replace`), so a run killed mid-write never leaves a broken file.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1], shape (N, C, H, W), as uint8 (N, H, W, C): round((x + 1)·127.5) clipped."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}")
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile N images in [−1, 1] into a uint8 array (rows·H', nrow·W', 3) with `padding` pixels between.

    `nrow` is the number of images per row (default ⌈√N⌉). Grey images are repeated to RGB.
    """
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)
    H, W = rows * (h + padding) + padding, nrow * (w + padding) + padding
    grid = np.full((H, W, 3), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = imgs[i]
    return grid


def save_png(array: np.ndarray, path) -> Path:
    """Write a uint8 (H, W, 3) array to `path` as PNG, atomically."""
    import matplotlib.image as mpimg

    return atomic_write(path, lambda f: mpimg.imsave(f, array, format="png"))


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save images in [−1, 1] as one PNG grid (atomic write); `scale` enlarges each pixel."""
    grid = image_grid(x, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return save_png(grid, path)


def show_images(x: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None, scale: float = 1.0):
    """Draw a grid of images in [−1, 1] on a matplotlib axis (for notebooks); returns the axis."""
    import matplotlib.pyplot as plt

    grid = image_grid(x, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * grid.shape[1] / 40 + 1, scale * grid.shape[0] / 40 + 1))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
