"""Control hints made from real images, with no extra network (ControlNet, Zhang et al. 2023).

Every maker takes one image or a batch, as uint8 pixels (H, W), (H, W, C) with C in 1, 3, 4,
(N, H, W), (N, H, W, C) or as
floats in [-1, 1] (C, H, W), (N, C, H, W), and returns hints in [-1, 1] as float32 (1, H, W) per
image (or (N, 1, H, W); the segmentation map keeps the image's C channels):

* :func:`canny_hint` — Canny edges (scikit-image): 1 on an edge, -1 elsewhere.
* :func:`sobel_hint` — soft edges: the Sobel gradient magnitude, scaled per image to [-1, 1]
  (the paper's "HED / soft edge" family, without the HED network).
* :func:`scribble_hint` — the paper's synthesised scribbles (sec. 4 and appendix): Canny edges
  merged and thinned to one-pixel centre lines, randomly cut into pieces, jittered by a smooth
  random displacement and dilated to a random stroke width; the seed makes it reproducible.
* :func:`segmentation_hint` — a coarse colour segmentation: k-means over the pixels' colours,
  each pixel painted with its cluster's mean colour.

:data:`HINT_MAKERS` names them for configs (``model.hint: canny``) and ``difflab hint KIND IMG``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import ndimage
from skimage import feature, filters, morphology

from difflab.data.folder import convert_mode
from difflab.errors import DifflabError

Hint = Callable[..., torch.Tensor]


def _as_unit_batch(image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, bool]:
    """(N, H, W, C) float64 in [0, 1] and whether the input was a single image."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().float().numpy()
        if array.ndim not in (3, 4):
            raise DifflabError(
                f"a float image must be (C, H, W) or (N, C, H, W) in [-1, 1], got shape {array.shape}."
            )
        single = array.ndim == 3
        array = (np.moveaxis(array[None] if single else array, 1, -1) + 1) / 2
        return np.clip(array, 0, 1).astype(np.float64), single
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DifflabError(
            f"give uint8 pixels or a float tensor in [-1, 1]; got a {array.dtype} array."
        )
    if array.ndim == 2:
        return array[None, :, :, None] / 255.0, True
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        return array[None, ..., :3] / 255.0, True
    if array.ndim == 3:  # (N, H, W) grey
        return array[..., None] / 255.0, False
    if array.ndim == 4:
        return array[..., :3] / 255.0, False
    raise DifflabError(
        f"uint8 pixels must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C); got {array.shape}."
    )


def _gray(batch: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W) luminance (ITU-R 601 weights for colour)."""
    if batch.shape[-1] == 1:
        return batch[..., 0]
    return batch[..., :3] @ np.array([0.299, 0.587, 0.114])


def _to_hint(maps: np.ndarray, single: bool) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) maps in [0, 1] -> (N, C, H, W) float32 in [-1, 1] (or (C, H, W))."""
    maps = maps[..., None] if maps.ndim == 3 else maps
    hint = torch.from_numpy(np.moveaxis(maps, -1, 1).astype(np.float32) * 2 - 1)
    return hint[0] if single else hint


def canny_edges(gray: np.ndarray, sigma: float, low: float, high: float) -> np.ndarray:
    """Canny (1986) on one (H, W) image in [0, 1]: (H, W) bool. ``low``/``high`` are the
    hysteresis thresholds as fractions of the largest gradient magnitude in the image."""
    return (
        feature.canny(
            gray, sigma=sigma, low_threshold=low, high_threshold=high, use_quantiles=False
        )
        if gray.max() > gray.min()
        else np.zeros(gray.shape, bool)
    )


def canny_hint(
    image: np.ndarray | torch.Tensor, sigma: float = 1.0, low: float = 0.1, high: float = 0.2
) -> torch.Tensor:
    """Canny edges of ``image``: 1 on an edge pixel, -1 elsewhere, (1, H, W) or (N, 1, H, W).

    ``sigma`` is the Gaussian smoothing in pixels; ``low`` / ``high`` the hysteresis thresholds on
    the gradient magnitude of the [0, 1] image.
    """
    batch, single = _as_unit_batch(image)
    edges = np.stack([canny_edges(g, sigma, low, high) for g in _gray(batch)])
    return _to_hint(edges.astype(np.float64), single)


def sobel_hint(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Soft edges: the Sobel gradient magnitude, each image scaled so its maximum is 1."""
    batch, single = _as_unit_batch(image)
    magnitude = np.stack([filters.sobel(g) for g in _gray(batch)])  # (N, H, W)
    peak = magnitude.reshape(len(magnitude), -1).max(axis=1)[:, None, None]
    return _to_hint(
        np.divide(magnitude, peak, out=np.zeros_like(magnitude), where=peak > 0), single
    )


def scribble(edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (H, W) bool edge map made to look drawn by hand: edges closer than 3 px merged and
    thinned to a 1 px centre line (the two Canny outlines of a pen stroke become one line),
    about a fifth of its pieces dropped, displaced by a smooth random field of about half a
    pixel, then dilated to a stroke of random width (1 px below 64 px, up to 3 px above)."""
    if not edges.any():
        return edges
    thin = morphology.skeletonize(morphology.closing(edges, morphology.disk(1)))
    pieces, count = ndimage.label(thin, structure=np.ones((3, 3)))
    keep = rng.random(count + 1) > 0.2
    keep[0] = False
    kept = keep[pieces] if keep[1:].any() else thin
    height, width = edges.shape
    shift = [ndimage.gaussian_filter(rng.normal(0, 4, (height, width)), 3) for _ in range(2)]
    rows, cols = np.nonzero(kept)
    moved_rows = np.clip(np.rint(rows + shift[0][rows, cols]), 0, height - 1).astype(int)
    moved_cols = np.clip(np.rint(cols + shift[1][rows, cols]), 0, width - 1).astype(int)
    moved = np.zeros_like(edges)
    moved[moved_rows, moved_cols] = True
    radius = int(rng.integers(0, 1 + min(height, width) // 64))
    return ndimage.binary_dilation(moved, morphology.disk(radius)) if radius else moved


def scribble_hint(
    image: np.ndarray | torch.Tensor, seed: int = 0, sigma: float = 1.0
) -> torch.Tensor:
    """Synthesised scribbles of ``image`` (see :func:`scribble`), from its Canny edges."""
    batch, single = _as_unit_batch(image)
    rng = np.random.default_rng(seed)
    maps = [scribble(canny_edges(g, sigma, 0.1, 0.2), rng) for g in _gray(batch)]
    return _to_hint(np.stack(maps).astype(np.float64), single)


def segmentation_hint(
    image: np.ndarray | torch.Tensor, regions: int = 4, iterations: int = 10
) -> torch.Tensor:
    """A coarse colour segmentation: Lloyd's k-means with ``regions`` clusters over each image's
    pixel colours (started from evenly spaced brightness quantiles, so it is deterministic), every
    pixel painted with its cluster's mean colour. Keeps the image's channels."""
    batch, single = _as_unit_batch(image)
    if regions < 1:
        raise DifflabError(f"the number of colour regions must be at least 1, got {regions}.")
    painted = np.empty_like(batch)
    for index, pixels in enumerate(batch.reshape(len(batch), -1, batch.shape[-1])):
        order = np.argsort(pixels.sum(axis=1))
        centres = pixels[order[np.linspace(0, len(order) - 1, regions).astype(int)]]
        for _ in range(iterations):
            nearest = ((pixels[:, None] - centres[None]) ** 2).sum(-1).argmin(1)  # (P,)
            for k in range(regions):
                if (nearest == k).any():
                    centres[k] = pixels[nearest == k].mean(axis=0)
        painted[index] = centres[nearest].reshape(batch.shape[1:])
    return _to_hint(painted, single)


HINT_MAKERS: dict[str, Hint] = {
    "canny": canny_hint,
    "sobel": sobel_hint,
    "scribble": scribble_hint,
    "segmentation": segmentation_hint,
}
"""The hint makers by name (configs' ``model.hint``, ``difflab hint KIND``)."""


def make_hint(kind: str, image: np.ndarray | torch.Tensor, **options: float) -> torch.Tensor:
    """The hint of ``kind`` (a :data:`HINT_MAKERS` name) for ``image``."""
    if kind not in HINT_MAKERS:
        raise DifflabError(f"unknown hint {kind!r}; choose one of {', '.join(HINT_MAKERS)}.")
    return HINT_MAKERS[kind](image, **options)


def read_hint_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """An image file as (C, H, W) float32 in [-1, 1], at its own size; ``channels`` 1 or 3
    converts it (None: grey stays grey, anything else becomes RGB)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            grey = img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16")
            mode = {1: "L", 3: "RGB"}.get(channels or 0, "L" if grey else "RGB")
            pixels = np.array(convert_mode(img, mode), dtype=np.uint8)
    except FileNotFoundError:
        raise DifflabError(f"the image {path} does not exist; check the path.") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DifflabError(
            f"{path} cannot be read as an image ({error}); give a PNG or JPEG."
        ) from None
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


def edge_f1(generated: torch.Tensor, target: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Per-image F1 of two edge maps, a pixel counting as matched when the other map has an edge
    within ``tolerance`` pixels (a (2 tolerance + 1)^2 window).

    Precision: the share of ``generated`` edge pixels near a ``target`` edge; recall: the share of
    ``target`` edge pixels near a ``generated`` edge; F1 = 2PR / (P + R), 0 when either map is
    empty. Shapes: bool or hint maps (> 0 is an edge) (B, 1, H, W) or (B, H, W) -> (B,).
    """
    gen = (generated > 0).float().reshape(len(generated), 1, *generated.shape[-2:])
    tgt = (target > 0).float().reshape(len(target), 1, *target.shape[-2:])
    window = 2 * tolerance + 1

    def near(edges: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(edges, window, stride=1, padding=tolerance)

    matched_gen = (gen * near(tgt)).sum(dim=(1, 2, 3))
    matched_tgt = (tgt * near(gen)).sum(dim=(1, 2, 3))
    precision = matched_gen / gen.sum(dim=(1, 2, 3)).clamp(min=1)
    recall = matched_tgt / tgt.sum(dim=(1, 2, 3)).clamp(min=1)
    return torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0
    )
