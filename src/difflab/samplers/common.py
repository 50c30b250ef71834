"""What every sampler shares: the progress callback and generator-aware noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.denoiser import Prediction
from difflab.diffusion.schedule import NoiseSchedule


class StepInfo(NamedTuple):
    """Passed to a sampler's callback after each step."""

    index: int  # 0-based step number
    total: int  # number of steps of this run
    t: int  # the timestep just evaluated
    x: torch.Tensor  # (B, C, H, W) the state after the step
    x0: torch.Tensor  # (B, C, H, W) the denoiser's prediction of clean data at this step


Callback = Callable[[StepInfo], None]


class DenoiserLike:
    """Anything called ``(x_t, t, cond) -> Prediction`` with a ``.schedule``: a Denoiser or a wrapper."""

    schedule: NoiseSchedule

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None
    ) -> Prediction: ...


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``; drawn on the generator's device, then moved."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x)


def batch_timestep(t: int, x: torch.Tensor) -> torch.Tensor:
    """(B,) int64 tensor filled with ``t``, on ``x``'s device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def transitions(timesteps: torch.Tensor) -> list[tuple[int, int]]:
    """``(t, t_prev)`` for each move of a sampler over strictly decreasing ``timesteps``.

    The last move goes to ``t_prev = -1``, clean data (``alpha_bar = 1``).
    """
    steps = [int(t) for t in timesteps]
    return list(zip(steps, [*steps[1:], -1], strict=True))


def alpha_bar_pair(
    schedule: NoiseSchedule, t: int, t_prev: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_bar_t, alpha_bar_prev)``, each (B, 1, 1, 1) like ``x``."""
    return schedule.alpha_bar_at(batch_timestep(t, x), x), schedule.alpha_bar_at(
        batch_timestep(t_prev, x), x
    )
