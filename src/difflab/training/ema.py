"""Exponential moving average of model weights (used for sampling, as in DDPM/ADM)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = d_n * shadow + (1 - d_n) * weights`` after optimizer update n = 1, 2, ...

    With ``warmup`` (the default) the decay is ``d_n = min(decay, (1 + n) / (10 + n))``, the
    warm-up of TensorFlow's ``tf.train.ExponentialMovingAverage`` when given ``num_updates``: the
    average spans about the last n / 9 updates until ``decay`` takes over (n ≈ 9,000 for 0.999),
    so the random initial weights do not dominate a short run. Without it ``d_n = decay`` from the
    first update. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """``d_n`` of the update that made ``num_updates`` updates."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = self.current_decay()
        shadow = list(self.module.parameters())
        torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters()], 1 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()
