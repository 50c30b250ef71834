"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), written with the posterior q(x_{t-1} | x_t, x0).

    mean     = sqrt(a_prev) beta_t / (1 - a_t) * x0 + sqrt(1 - beta_t) (1 - a_prev) / (1 - a_t) * x_t   (eq. 7)
    variance = beta_t (1 - a_prev) / (1 - a_t)   ("posterior", beta-tilde)   or   beta_t   ("beta")

with ``beta_t = 1 - a_t / a_prev``, so the same code runs on a respaced sub-sequence of timesteps
(Improved DDPM, sec. 4); with all T steps it is exactly Algorithm 2. No noise is added at the last step.
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.errors import DifflabError
from difflab.samplers.common import (
    Callback,
    DenoiserLike,
    StepInfo,
    alpha_bar_pair,
    batch_timestep,
    gaussian_like,
    transitions,
)

VARIANCES: tuple[str, ...] = ("posterior", "beta")


def ddpm_sample(
    denoiser: DenoiserLike,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | None = None,
    cond: Conditioning | None = None,
    *,
    variance: str = "posterior",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling from x_T (B, C, H, W); all T steps unless ``timesteps`` (S,) is given.

    Args:
        variance: ``"posterior"`` (beta-tilde, the lower bound) or ``"beta"`` (the upper bound).
    """
    if variance not in VARIANCES:
        raise DifflabError(
            f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCES)}."
        )
    if timesteps is None:
        timesteps = torch.arange(denoiser.schedule.num_timesteps - 1, -1, -1)
    moves = transitions(timesteps)
    x = x_T
    for index, (t, t_prev) in enumerate(moves):
        pred = denoiser(x, batch_timestep(t, x), cond)
        alpha_bar_t, alpha_bar_prev = alpha_bar_pair(
            denoiser.schedule, t, t_prev, x
        )  # (B, 1, 1, 1) each
        beta_t = 1 - alpha_bar_t / alpha_bar_prev
        mean = (
            alpha_bar_prev.sqrt() * beta_t * pred.x0
            + (1 - beta_t).sqrt() * (1 - alpha_bar_prev) * x
        ) / (1 - alpha_bar_t)
        if t_prev >= 0:
            var = (
                beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
                if variance == "posterior"
                else beta_t
            )
            x = mean + var.sqrt() * gaussian_like(x, generator)
        else:
            x = mean
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, pred.x0))
    return x
