"""What a ControlNet adds to the locked network it controls (the type the backbones' hooks read)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class ControlResiduals(NamedTuple):
    """What a ControlNet adds to its base network.

    Attributes:
        features: U-Net: one (B, C_i, H_i, W_i) per skip connection, in the down path's order;
            DiT: one (B, T, D) per copied block.
        middle: U-Net: (B, C, h, w) added to the middle block's output; DiT: None.
    """

    features: tuple[torch.Tensor, ...]
    middle: torch.Tensor | None

    @property
    def count(self) -> int:
        """K, the number of outputs (skips + middle, or blocks): the length of a per-block scale."""
        return len(self.features) + (self.middle is not None)

    def scaled(
        self, weights: Sequence[float], mask: torch.Tensor | None = None
    ) -> ControlResiduals:
        """Output i times ``weights[i]`` (the middle last), times ``mask`` (B,) per sample."""
        outputs = [*self.features, *([self.middle] if self.middle is not None else [])]
        if mask is not None:
            outputs = [o * mask.to(o.dtype).reshape(-1, *([1] * (o.ndim - 1))) for o in outputs]
        outputs = [o * w for o, w in zip(outputs, weights, strict=True)]
        if self.middle is None:
            return ControlResiduals(tuple(outputs), None)
        return ControlResiduals(tuple(outputs[:-1]), outputs[-1])

    def __add__(self, other: object) -> ControlResiduals:  # type: ignore[override]
        """The sum of two ControlNets' outputs (several ControlNets at once)."""
        assert isinstance(other, ControlResiduals)
        features = tuple(a + b for a, b in zip(self.features, other.features, strict=True))
        middle = None if self.middle is None else self.middle + other.middle
        return ControlResiduals(features, middle)
