"""Image helpers shared by every layer: float <-> uint8 conversion and PNG grids.

Images are ``[N, C, H, W]``: floats in [-1, 1] (models and the data layer) or uint8 (samples on disk, judges).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float ``[N, C, H, W]`` -> uint8 ``[N, C, H, W]``."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_grid(images: np.ndarray, path, nrow: int | None = None, pad: int = 1) -> None:
    """Write uint8 ``[N, C, H, W]`` images as one PNG grid."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[
            i
        ].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img.save(path)


def save_png(image: np.ndarray, path) -> None:
    """Write one uint8 ``[C, H, W]`` image (C = 1 or 3) as a PNG."""
    from PIL import Image

    a = image.transpose(1, 2, 0)
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path)
