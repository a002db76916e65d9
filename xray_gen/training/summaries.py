"""Image summaries for TensorBoard (clu `write_images`): what the model sees, at a glance."""

from __future__ import annotations

import numpy as np


def image_grid(images: np.ndarray, columns: int = 4) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (1, rows*H, columns*W, C) grid, padded with black tiles."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), images.dtype)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
    return grid[None]


def write_input_grid(writer, step: int, loader, views, name: str = "inputs", count: int = 8) -> None:
    """Writes the first `count` examples of `loader`'s first batch, the views side by side."""
    batch = next(iter(loader))
    tiles = np.concatenate([np.asarray(batch[v][:count]) for v in views], axis=2)
    writer.write_images(step, {name: image_grid(tiles, columns=max(1, 4 // len(views)))})
