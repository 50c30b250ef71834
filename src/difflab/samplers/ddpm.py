"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), written with the posterior q(x_{t-1} | x_t, x0).

    mean     = sqrt(a_prev) beta_t / (1 - a_t) * x0 + sqrt(1 - beta_t) (1 - a_prev) / (1 - a_t) * x_t   (eq. 7)
    variance = beta_t (1 - a_prev) / (1 - a_t)   ("posterior", beta-tilde)   or   beta_t   ("beta")

with ``beta_t = 1 - a_t / a_prev``, so the same code runs on a respaced sub-sequence of timesteps
(Improved DDPM, sec. 4); with all T steps it is exactly Algorithm 2. No noise is added at the last step.

A network with learned variances (its Prediction carries ``variance_fraction``) sets the variance
itself, ``exp(f log beta_t + (1 - f) log beta_tilde_t)`` (Improved DDPM eq. 15) with the respaced
betas above, whatever ``variance`` says.
"""

from __future__ import annotations

import torch

from difflab.diffusion.conditioning import Conditioning
from difflab.diffusion.vlb import learned_log_variance, posterior_mean, step_log_variances
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
        variance: ``"posterior"`` (beta-tilde, the lower bound) or ``"beta"`` (the upper bound);
            unused for a network with learned variances.
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
        mean = posterior_mean(pred.x0, x, alpha_bar_t, alpha_bar_prev)  # eq. 7
        if t_prev >= 0:
            if pred.variance_fraction is not None:
                log_var = learned_log_variance(
                    pred.variance_fraction, *step_log_variances(alpha_bar_t, alpha_bar_prev)
                )  # (B, C, H, W)
                std = (0.5 * log_var).exp()
            elif variance == "posterior":
                std = (beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt()
            else:
                std = beta_t.sqrt()
            x = mean + std * gaussian_like(x, generator)
        else:
            x = mean
        if callback is not None:
            callback(StepInfo(index, len(moves), t, x, pred.x0))
    return x
