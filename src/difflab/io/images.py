"""Saving image tensors as PNG files and grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difflab.errors import DifflabError
from difflab.io.atomic import atomic_path, remove_temporaries


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8; NaN or infinite values are an error (a
    diverged sampler or model), never written as black or white pixels."""
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise DifflabError(
            f"{bad} of {images.numel()} values of the images to write are NaN or infinite (the "
            "sampler or the model diverged); nothing was written: try another sampler, fewer "
            "guidance or more steps, or check the checkpoint."
        )
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (B, C, H, W) images into one (H', W', C) uint8 array, ``nrow`` images per row."""
    pixels = to_uint8(images)  # (B, H, W, C)
    count, height, width, channels = pixels.shape
    per_row = nrow or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / per_row)
    grid = np.zeros(
        (rows * (height + padding) + padding, per_row * (width + padding) + padding, channels),
        np.uint8,
    )
    for index in range(count):
        r, c = divmod(index, per_row)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, C) uint8 array as a PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _pil(array).save(tmp, format="PNG")
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (B, C, H, W) images in [-1, 1] as one PNG grid."""
    return save_png(make_grid(images, nrow), path)


def save_images(images: torch.Tensor, directory: str | Path, prefix: str = "sample") -> list[Path]:
    """Save each image of (B, C, H, W) as ``directory/prefix_00000.png``; first removes the
    temporaries a killed writer left there."""
    directory = Path(directory)
    remove_temporaries(directory, recursive=False)
    return [
        save_png(array, directory / f"{prefix}_{i:05d}.png")
        for i, array in enumerate(to_uint8(images))
    ]
