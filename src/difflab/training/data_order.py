"""A reproducible, resumable stream of mini-batch indices.

Epoch ``e`` visits a permutation drawn from a generator seeded with ``(seed, e)``; the stream's
whole state is (epoch, position), so a resumed run sees exactly the batches an uninterrupted one
would. Batches run across epoch boundaries, so no sample is dropped and tiny datasets work.
"""

from __future__ import annotations

import torch


class BatchStream:
    def __init__(
        self, dataset_size: int, batch_size: int, seed: int, epoch: int = 0, position: int = 0
    ) -> None:
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
            parts.append(take)
            needed -= len(take)
            self.position += len(take)
            if self.position == self.dataset_size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return torch.cat(parts)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}
