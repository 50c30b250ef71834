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


def edm_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """EDM's noise level of a VP schedule, ``sigma = sqrt((1 - a) / a)`` (Karras et al. 2022,
    Table 1, "VP": ``x_t = s(t) (x0 + sigma eps)`` with ``s = sqrt(a)``); 0 at clean data."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def edm_sigma_pair(
    schedule: NoiseSchedule, t: int, t_prev: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_t, sigma_prev)`` of :func:`edm_sigma`, each (B, 1, 1, 1) like ``x``."""
    alpha_bar_t, alpha_bar_prev = alpha_bar_pair(schedule, t, t_prev, x)
    return edm_sigma(alpha_bar_t), edm_sigma(alpha_bar_prev)


def edm_start(schedule: NoiseSchedule, timesteps: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """x_T (B, C, H, W) of the VP schedule as EDM's unscaled state ``x_hat = x_T / s(t_0)``."""
    alpha_bar = schedule.alpha_bar_at(batch_timestep(int(timesteps[0]), x_T), x_T)
    return x_T / alpha_bar.sqrt()


def edm_denoise(
    denoiser: DenoiserLike,
    x_hat: torch.Tensor,
    t: int,
    sigma: torch.Tensor,
    cond: Conditioning | None,
) -> Prediction:
    """EDM's ``D(x_hat; sigma)``: the denoiser at ``x_t = s(t) x_hat``, ``s = 1 / sqrt(1 + sigma^2)``
    (Karras et al. 2022, eq. 4 with the VP scaling), at the model's own discrete timestep ``t``."""
    return denoiser(edm_vp_state(x_hat, sigma), batch_timestep(t, x_hat), cond)


def edm_vp_state(x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM's unscaled state back in the VP schedule's coordinates, ``x_t = x_hat / sqrt(1 + sigma^2)``."""
    return x_hat / (1 + sigma**2).sqrt()
