"""A reproducible, resumable stream of mini-batch indices, and the identity of the data it indexes.

Epoch ``e`` visits a permutation drawn from a generator seeded with ``(seed, e)``; the stream's
whole state is (epoch, position), so a resumed run sees exactly the batches an uninterrupted one
would. Batches run across epoch boundaries, so no sample is dropped and tiny datasets work.

A position only means something for the data it was taken on: a state file stores
:func:`dataset_identity` (the number of images and a SHA-256 of their pixels and labels) beside it,
and :func:`check_same_data` refuses to resume on data that changed since.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.errors import DifflabError

HASH_CHUNK = 1 << 24  # bytes hashed at a time (a 16 MiB slice of the pixels)


class BatchStream:
    def __init__(
        self, dataset_size: int, batch_size: int, seed: int, epoch: int = 0, position: int = 0
    ) -> None:
        if dataset_size < 1 or batch_size < 1:
            raise ValueError(f"a batch stream needs images and batches; got {dataset_size} images")
        if epoch < 0 or not 0 <= position < dataset_size:
            raise ValueError(
                f"data position {position} (epoch {epoch}) lies outside a dataset of "
                f"{dataset_size} images"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.position = position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)  # (N,)

    def next(self) -> torch.Tensor:
        """(batch_size,) int64 indices of the next mini-batch."""
        parts, needed = [], self.batch_size
        while needed:
            take = self._order[self.position : self.position + needed]
            assert len(take), "the position lies inside the permutation (checked at __init__)"
            parts.append(take)
            needed -= len(take)
            self.position += len(take)
            if self.position == self.dataset_size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return torch.cat(parts)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """``{"size": N, "sha256": ...}`` of a training set: its image count and a hash of its pixels
    (an in-memory tensor) or of its on-disk store's checksum and rows (a streaming set), and of
    its labels."""
    digest = hashlib.sha256()
    images = dataset.images
    if isinstance(images, torch.Tensor):
        digest.update(str(tuple(images.shape)).encode())
        flat = images.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        for start in range(0, len(flat), HASH_CHUNK):
            digest.update(memoryview(flat[start : start + HASH_CHUNK]))
    else:  # a streaming set: the store's own pixel checksum and which of its rows are used
        store = dataset.images._dataset.store
        rows = np.ascontiguousarray(dataset.images._dataset.rows, dtype=np.int64)
        digest.update(f"{store.shape} {store.crc32}".encode())
        digest.update(memoryview(rows))
    digest.update(memoryview(dataset.labels.detach().cpu().contiguous().numpy()))
    return {"size": len(dataset), "sha256": digest.hexdigest()}


def check_same_data(stored: Any, current: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``path`` when the data it recorded differ from the run's data now."""
    if not isinstance(stored, dict) or not isinstance(stored.get("size"), int):
        raise DifflabError(
            f"{path} holds a damaged record of its training data; restore it from a good copy."
        )
    if stored["size"] != current["size"]:
        raise DifflabError(
            f"the training data changed since {path} was written: {stored['size']} images then, "
            f"{current['size']} now; resume with the same data (data.limit, the folder) or start "
            "a new train.out_dir."
        )
    if stored.get("sha256") != current["sha256"]:
        raise DifflabError(
            f"the training data changed since {path} was written: the same {current['size']} "
            "images count but different pixels or labels; resume with the same data or start a "
            "new train.out_dir."
        )
