"""Images in and out of the web app: uploaded data URLs -> checked PIL images -> hint tensors,
and image tensors -> PNG bytes."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from difflab.io.images import make_grid
from difflab.web.limits import ServeLimits
from difflab.web.schemas import RequestRefused

DATA_URL = re.compile(r"data:image/(png|jpeg|webp|gif|bmp);base64,(.*)", re.DOTALL)


def decode_data_url(url: str, limits: ServeLimits, what: str = "hint") -> Image.Image:
    """The image a ``data:image/...;base64,`` URL holds, refused (413) over the size limits and
    (422) when it is not an image."""
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise RequestRefused(
            422, f"{what} must be a data:image/png;base64,... URL (png, jpeg, webp, gif or bmp)."
        )
    if len(match.group(2)) > limits.max_image_bytes * 4 // 3 + 4:
        raise RequestRefused(413, _too_large(what, limits))
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(422, f"{what} is not valid base64.") from None
    if len(data) > limits.max_image_bytes:
        raise RequestRefused(413, _too_large(what, limits))
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        raise RequestRefused(
            413, f"{what} claims more pixels than any image this server takes."
        ) from None
    except (UnidentifiedImageError, OSError):
        raise RequestRefused(422, f"{what} is not a readable image.") from None
    if max(image.size) > limits.max_image_side:
        raise RequestRefused(
            413,
            f"{what} is {image.size[0]}x{image.size[1]} pixels; this server takes at most "
            f"{limits.max_image_side} on a side.",
        )
    try:
        image.load()
    except (OSError, ValueError):
        raise RequestRefused(422, f"{what} is a damaged image file.") from None
    return image


def _too_large(what: str, limits: ServeLimits) -> str:
    return f"{what} is larger than this server's limit of {limits.max_image_bytes:,} bytes."


def grey_pixels(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float in [0, 1]: ``image`` in grey, transparent parts black, area-resized to
    ``size`` = (H, W) so thin strokes stay visible."""
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    grey = image.convert("L").resize((size[1], size[0]), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)


def hint_tensor(image: Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    """The control hint (1, C, H, W) in [-1, 1] of ``shape`` = (C, H, W): the sketch's grey
    levels (white strokes = 1), repeated over C channels. A blank sketch (one grey level
    everywhere) is refused (422): it carries no control."""
    channels, height, width = shape
    pixels = grey_pixels(image, (height, width))  # (H, W)
    if float(pixels.max() - pixels.min()) < 1 / 255:
        raise RequestRefused(
            422, "the sketch is blank; draw on the canvas, or turn the sketch off."
        )
    return (pixels * 2 - 1).expand(1, channels, height, width).clone()  # (1, C, H, W)


def png_bytes(images: torch.Tensor, nrow: int | None = None) -> bytes:
    """(B, C, H, W) images in [-1, 1] as the bytes of one PNG (a grid when B > 1)."""
    grid = make_grid(images, nrow, padding=0 if len(images) == 1 else 2)  # (H', W', C) uint8
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(images: torch.Tensor, nrow: int | None = None) -> str:
    """:func:`png_bytes` as a ``data:image/png;base64,`` URL (for small previews in JSON)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(images, nrow)).decode("ascii")
