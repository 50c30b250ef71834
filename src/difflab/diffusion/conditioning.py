"""What a network is conditioned on, in one frozen dataclass.

A field a network does not use is ignored, not an error, so one sampler call serves every
backbone. Classifier-free guidance drops fields with :meth:`Conditioning.drop`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

NULL_LABEL = -1
"""The "no label" class: networks map it to their reserved extra embedding row."""


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Conditioning signals for a batch.

    Attributes:
        labels: (B,) int64 class labels, ``NULL_LABEL`` for "no label"; ``None`` if unconditional.
    """

    labels: torch.Tensor | None = None

    def drop(self, mask: torch.Tensor) -> Conditioning:
        """Replace the conditioning of the samples where ``mask`` (B,) bool is true by "nothing"."""
        if self.labels is None:
            return self
        return replace(
            self, labels=torch.where(mask.to(self.labels.device), NULL_LABEL, self.labels)
        )

    def dropped(self) -> Conditioning:
        """The same batch with every field set to "nothing" (the unconditional branch of CFG)."""
        if self.labels is None:
            return self
        return replace(self, labels=torch.full_like(self.labels, NULL_LABEL))

    def to(self, device: torch.device | str) -> Conditioning:
        return replace(self, labels=None if self.labels is None else self.labels.to(device))

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Concatenate batches along dim 0 (for one batched forward over several branches)."""
        if any(p.labels is None for p in parts):
            return Conditioning()
        return Conditioning(labels=torch.cat([p.labels for p in parts]))  # type: ignore[misc]
