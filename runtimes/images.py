"""Images out: a grid of uint8 images and PNG files written atomically (Pillow)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from edge_sdk.errors import InvalidInputError, optional_import
from edge_sdk.package import write_atomically


def image_grid(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 images tiled into one (rows*H, columns*W, C) image with ``gap`` pixels between."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * (height + gap) : row * (height + gap) + height, column * (width + gap) : column * (width + gap) + width] = image
    return grid


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write (H, W, C) uint8 (C = 1 or 3) as a PNG; never leaves a half-written file under ``path``."""
    Image = optional_import("PIL.Image", "image", "writing PNG images")

    path = Path(path)
    array = image[..., 0] if image.shape[-1] == 1 else image
    try:
        return write_atomically(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))
    except OSError as e:
        raise InvalidInputError(f"cannot write {path}: {e.strerror or e}") from None
