"""Source images to arrays: decoding any PNG/JPEG to square greyscale uint8, one view at a time.

`read_image` decodes (8/16-bit, RGB, palette) and resizes; `load_view`/`load_views` read a
study's views, counting missing or unreadable files in the build summary instead of failing the
build. Separate from the CSV/label parsing and the TFDS plumbing: only this module decodes image
files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xray_gen.data.builders.build_summary import BuildSummary
from xray_gen.data.builders.source_files import rel


class ImageError(Exception):
    """An image file that exists but cannot be decoded."""


def read_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Reads an image file as greyscale uint8 resized to (resolution, resolution, 1).

    16-bit images are rescaled by their own maximum bit depth; colour and palette images are
    converted with the ITU-R 601 luma transform. Resizing uses a Lanczos filter (PIL), applied to
    the full image (aspect ratio is not preserved: chest radiographs are close to square).
    Raises `ImageError` if the file cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # Lets libjpeg decode at a reduced scale (never below the target size).
                im.draft("L", (resolution, resolution))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                top = float(arr.max()) if arr.size else 0.0
                bits = max(8, int(np.ceil(np.log2(top + 1)))) if top > 0 else 8
                arr = np.clip(arr / (2.0**bits - 1.0) * 255.0, 0, 255)
                im = Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
            elif im.mode != "L":
                im = im.convert("L")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            out = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for bad/truncated files.
        raise ImageError(f"{path}: {e}") from e
    return out[..., None]


def load_view(path: Path | None, resolution: int, summary: BuildSummary, root: Path) -> np.ndarray | None:
    """Reads one view, counting a missing or unreadable file in the summary (then None)."""
    if path is None:
        return None
    if not Path(path).is_file():
        summary.skip("missing image", rel(path, root))
        return None
    try:
        return read_image(path, resolution)
    except ImageError:
        summary.skip("unreadable image", rel(path, root))
        return None


def load_views(frontal_path, lateral_path, opts, resolution: int, summary: BuildSummary, root: Path, where: str):
    """Both views of a study, or None (counted under `where`) when the required ones are unusable."""
    frontal = load_view(frontal_path, resolution, summary, root)
    lateral = load_view(lateral_path, resolution, summary, root)
    if opts["require_frontal"] and frontal is None:
        summary.skip("no frontal view (image unusable)", where)
        return None
    if opts["require_lateral"] and lateral is None:
        summary.skip("no lateral view (image unusable)", where)
        return None
    if frontal is None and lateral is None:
        summary.skip("no usable image", where)
        return None
    return frontal, lateral
