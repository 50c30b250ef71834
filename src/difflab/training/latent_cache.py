"""Latent Diffusion's training data: the images encoded once by a frozen autoencoder, cached on disk.

Rombach et al. 2022 (sec. 3.2) train the diffusion model on ``z = E(x)``, scaled to unit variance
(``z * latent_scale``, the scale measured when the autoencoder finished training). The encoder is
frozen, so each image's latent is computed once and kept in a cache:

* ``<digest>.npy``: float32 ``(N, c, h, w)`` scaled latents, opened memory-mapped;
* ``<digest>.json`` (the *sidecar*): the key (autoencoder SHA-256, the data section, the split and
  the number of images), the shape and a CRC-32 of the latent bytes.

``digest`` is a hash of the key, so a cache made by another autoencoder or from other data
settings is another file and is never read. Both files are written atomically (temporary file,
fsync, rename), the sidecar last; a cache whose sidecar is missing, names another key or whose
CRC does not match (a kill in the middle of a write, a damaged disk) is rebuilt, never used.
Several processes (torchrun ranks, two runs at once) may build the same cache at the same time:
each writes a complete file and the last rename wins, with identical bytes.

The KL autoencoder's posterior mean is cached (LDM samples z ~ q(z|x) afresh each step; with
KL weight ~1e-6 the posterior's standard deviation is small, and the cache makes every step as
cheap as pixel-space training). Limit: written down in the README.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from difflab.data.streaming import data_cache_dir, settings_digest
from difflab.io.atomic import atomic_path, write_bytes_atomic

LATENT_FORMAT = "difflab-latents-1"
ENCODE_BATCH = 64  # images per encoder forward


class Encoder(Protocol):
    """What the cache needs of an autoencoder: ``encode(x) -> z`` and ``latent_scale``."""

    latent_scale: float

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


def latent_cache_dir() -> Path:
    """``$DIFFLAB_CACHE/data/latents`` (default ``~/.cache/difflab/data/latents``)."""
    return data_cache_dir() / "latents"


@torch.no_grad()
def encode_images(autoencoder: Encoder, images: Any, count: int) -> torch.Tensor:
    """``autoencoder.encode(x) * latent_scale`` of ``images[0:count]`` (anything indexable by a
    slice that returns (B, C, H, W) in [-1, 1]): (count, c, h, w) float32 on the CPU."""
    parts = []
    for start in range(0, count, ENCODE_BATCH):
        x = images[start : min(start + ENCODE_BATCH, count)]
        parts.append(autoencoder.encode(x).float().cpu() * autoencoder.latent_scale)
    return torch.cat(parts)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _read(path: Path, key: dict[str, Any]) -> torch.Tensor | None:
    """The cached latents at ``path``, or None when absent, incomplete, damaged or of another key."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != LATENT_FORMAT or meta.get("key") != key:
            return None
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if list(array.shape) != meta["shape"] or array.dtype != np.float32:
            return None
        if _crc(array) != meta["crc32"]:
            return None
        return torch.from_numpy(np.array(array))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, latents: torch.Tensor, key: dict[str, Any]) -> None:
    array = latents.numpy().astype(np.float32, copy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)  # the sidecar marks a complete cache
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    meta = {"format": LATENT_FORMAT, "key": key, "shape": list(array.shape), "crc32": _crc(array)}
    write_bytes_atomic(path.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode())


def cached_latents(
    autoencoder: Encoder,
    images: Any,
    count: int,
    key: dict[str, Any],
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, bool]:
    """The scaled latents of ``images[:count]``, read from the cache or encoded and cached.

    Args:
        autoencoder: the frozen autoencoder (eval mode).
        images: the training images, indexable by slices (a tensor or a streaming view).
        count: how many.
        key: everything the latents depend on besides the pixels' source: the autoencoder's
            SHA-256 and the data section and split (JSON-ready).
        cache_dir: default :func:`latent_cache_dir`.

    Returns:
        ``(latents (count, c, h, w) float32, reused)``; ``reused`` is False when encoded now.
    """
    key = {**key, "count": int(count)}
    path = (cache_dir or latent_cache_dir()) / f"{settings_digest(key)}.npy"
    cached = _read(path, key)
    if cached is not None:
        return cached, True
    latents = encode_images(autoencoder, images, count)
    _write(path, latents, key)
    return latents, False
