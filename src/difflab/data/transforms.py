"""Tensor transforms for image batches: value range, resize, center crop, padding, channels.

Every function takes and returns a batch ``(N, C, H, W)``; float batches are in [-1, 1] with -1
as black (and as MNIST's background).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from difflab.errors import DifflabError

# ITU-R 601-2 luma weights, the ones PIL's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def images_from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels 0..255 to float32 in [-1, 1].

    Args:
        images: ``(N, H, W)`` (gray) or ``(N, H, W, C)`` (channels last) uint8.

    Returns:
        ``(N, C, H, W)`` float32 contiguous, ``x / 127.5 - 1``.
    """
    if isinstance(images, torch.Tensor):
        images = images.numpy(force=True)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    x = torch.from_numpy(images.astype(np.float32))  # a writable copy, even of read-only input
    x = x.div_(127.5).sub_(1.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return x.contiguous()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square images to ``size``×``size``: area averaging to shrink, bilinear to grow.

    Args:
        images: ``(N, C, H, W)`` float in [-1, 1].
        size: the new height and width in pixels.

    Returns:
        ``(N, C, size, size)`` float in [-1, 1] (non-square input is stretched to square).
    """
    if size < 1:
        raise DifflabError(f"image_size must be a positive number of pixels, got {size}.")
    if images.shape[-2:] == (size, size):
        return images
    if size <= min(images.shape[-2:]):
        out = F.interpolate(images, size=(size, size), mode="area")
    else:
        out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return out.clamp_(-1.0, 1.0).contiguous()


def center_crop_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``×``size`` window of each image.

    Args:
        images: ``(N, C, H, W)`` with ``H, W >= size``.

    Returns:
        ``(N, C, size, size)``; when ``H - size`` is odd the extra row is cut at the bottom.
    """
    height, width = images.shape[-2:]
    if size > height or size > width:
        raise DifflabError(
            f"cannot center-crop {height}×{width} images to {size}×{size}; resize first or ask "
            "for a smaller image_size."
        )
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size].contiguous()


def pad_images_to_32(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Pad 28×28 images with 2 pixels of background (-1) on each side to 32×32.

    Args:
        images: ``(N, C, 28, 28)`` float in [-1, 1].
        name: the dataset name used in the error message.

    Returns:
        ``(N, C, 32, 32)``.
    """
    height, width = images.shape[-2:]
    if (height, width) != (28, 28):
        raise DifflabError(
            f"{name}: pad_to_32 only applies to 28×28 images but these are {height}×{width}; "
            "drop pad_to_32 (--pad-to-32) or use image_size=32 to resize instead."
        )
    return F.pad(images, (2, 2, 2, 2), value=-1.0).contiguous()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert between gray and RGB: gray → RGB repeats the channel, RGB → gray takes luma.

    Args:
        images: ``(N, 1, H, W)`` or ``(N, 3, H, W)`` float in [-1, 1].
        channels: 1 or 3.

    Returns:
        ``(N, channels, H, W)``; luma uses the ITU-R 601-2 weights (as PIL's ``convert("L")``).
    """
    if channels not in (1, 3):
        raise DifflabError(f"channels must be 1 (gray) or 3 (RGB), got {channels}.")
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True).clamp_(-1.0, 1.0).contiguous()
    raise DifflabError(f"cannot convert images with {have} channels; expected 1 or 3.")
