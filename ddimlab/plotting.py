"""Image grids and PNG files for samples, written with Pillow (no torchvision).

Images come in the model's range [−1, 1] with shape (N, C, H, W), C = 1 (grey) or 3 (RGB).
`image_grid` tiles them into one array, `grid_png` encodes it; `save_image_grid` writes it to a PNG atomically
(temporary name, then `os.replace`), so a run killed mid-write never leaves a broken file; `save_png`
writes one image (the sample files of `generate`).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .checks import as_real, check_int, check_values
from .data import check_nchw, from_model_range, looks_0_255
from .files import atomic_write


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1], shape (N, C, H, W), as uint8 (N, H, W, C) by `data.from_model_range`."""
    if isinstance(x, (str, Path)):
        raise TypeError(f"images must be a tensor (N, C, H, W), got the path {str(x)!r}: the images come first, "
                        f"as in save_image_grid(x, path)")
    check_values("x", x, "drawing the images needs their pixel values")     # else "Cannot copy out of meta tensor"
    x = torch.as_tensor(x).detach().cpu()
    if not x.dtype.is_floating_point:
        raise TypeError(f"images must be floating point in [-1, 1], got {x.dtype}; for 0..255 images pass "
                        f"data.to_model_range(x)")
    check_nchw(x)
    if looks_0_255(x):
        warnings.warn(f"images are drawn as [-1, 1], and these look like 0..255 (values in {float(x.min()):.3g}.."
                      f"{float(x.max()):.3g}): they come out white; pass x / 127.5 - 1", stacklevel=3)
    return from_model_range(x).permute(0, 2, 3, 1).numpy()


def grid_size(n: int, h: int, w: int, nrow: int | None = None, padding: int = 1) -> tuple[int, int, int]:
    """(height, width, images per row) of `image_grid`'s tiling of n images of h×w pixels."""
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    n, h, w, padding = check_int("n", n), check_int("h", h), check_int("w", w), check_int("padding", padding, 0)
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    nrow = min(check_int("nrow", nrow, note=" or None"), n)
    return math.ceil(n / nrow) * (h + padding) + padding, nrow * (w + padding) + padding, nrow


def image_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile N images in [−1, 1] into a uint8 array (rows·H', nrow·W', 3) with `padding` pixels between.

    `nrow` is the number of images per row (default ⌈√N⌉). Grey images are repeated to RGB.
    """
    padding = check_int("padding", padding, 0)
    pad_value = check_int("pad_value", pad_value, 0, 255, " (a grey level)")
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    H, W, nrow = grid_size(n, h, w, nrow, padding)
    grid = np.full((H, W, 3), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = imgs[i]
    return grid


def png_bytes(image, text: dict | None = None) -> bytes:
    """One uint8 image encoded as PNG: an (H, W, C) array or a (C, H, W) tensor with C = 1 (grey) or 3 (RGB).
    The one PNG encoder, for grids and for the sample files FID reads. text: {key: value} strings stored in the file's
    tEXt chunks (the seal of a `generate` sample), which image readers pass over."""
    from PIL import Image  # Pillow comes with matplotlib
    from PIL.PngImagePlugin import PngInfo

    if isinstance(image, torch.Tensor) and image.ndim != 3:        # torch's "permute(sparse_coo): number of dimensions"
        raise ValueError(f"save_png needs a uint8 C×H×W tensor with C in (1, 3) (or an H×W×C array), got shape "
                         f"{tuple(image.shape)}")
    a = image.detach().cpu().permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"save_png needs a uint8 image H×W×C (or a C×H×W tensor) with C in (1, 3), "
                         f"got {a.dtype} {a.shape}")
    if text is not None and (not isinstance(text, dict) or not all(isinstance(s, str) for kv in text.items() for s in kv)):
        raise TypeError(f"text must be a dict of strings {{key: value}} (PNG tEXt chunks), got {text!r}")
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_path(path) -> Path:
    """The PNG writers write PNG bytes: a path that names another format (out.jpg) would hold a file its name belies. A
    symbolic link is written through, as an image editor saves it (`atomic_write` alone would replace the link)."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{path} does not end in .png, and this writes PNG files; name it .png")
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def save_png(image, path, text: dict | None = None) -> Path:
    """Write one uint8 image to `path` (a .png) as PNG (`png_bytes`, with its `text` chunks), atomically."""
    data, path = png_bytes(image, text), png_path(path)
    return atomic_write(path, lambda f: f.write(data))


def grid_png(x: torch.Tensor, nrow: int | None = None, scale: int = 1) -> bytes:
    """Images in [−1, 1] as one PNG grid, encoded; `scale` enlarges each pixel."""
    scale = check_int("scale", scale)
    grid = image_grid(x, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return png_bytes(grid)


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save images in [−1, 1] as one PNG grid (`grid_png`) to `path` (a .png), atomically."""
    data, path = grid_png(x, nrow, scale), png_path(path)
    return atomic_write(path, lambda f: f.write(data))


def show_images(x: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None, scale: float = 1.0):
    """Draw a grid of images in [−1, 1] on a matplotlib axis (for notebooks); returns the axis."""
    import matplotlib.pyplot as plt

    if (s := as_real(scale)) is None or s <= 0:                 # 0 or -1 drew at a fixed size without a word
        raise ValueError(f"scale must be a finite number > 0 (the figure's size per pixel), got {scale!r}")
    grid = image_grid(x, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * grid.shape[1] / 40 + 1, scale * grid.shape[0] / 40 + 1))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
