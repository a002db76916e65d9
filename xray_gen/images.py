"""Model images (float in [-1, 1]) to PNG files: one conversion for every model's samples."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [-1, 1] (H, W[, 1 or 3]) -> uint8 (H, W) grey or (H, W, 3) RGB, clipped and rounded."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
    Image.fromarray(to_uint8(image)).save(path)


def write_grid(path: str, rows: list[list[np.ndarray]]) -> None:
    """One PNG with a row of images per entry (all the same size; short rows padded black)."""
    tiles = [np.concatenate([to_uint8(im) for im in row], axis=1) for row in rows]
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1])) + ((0, 0),) * (t.ndim - 2)) for t in tiles]
    Image.fromarray(np.concatenate(tiles, axis=0)).save(path)
